"""The demo: a throwaway PostgreSQL cluster, generated data, and the story `pgsnap demo` tells."""
