"""The one exception type the CLI turns into `error: <message>` and an exit code."""


class PgsnapError(Exception):
    """An expected failure with a message meant for the operator.

    Exit codes: 1 = generic failure (default), 2 = cannot connect, database behind or
    ahead of this pgsnap, bad usage; 3 = could not take a lock in time.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)
