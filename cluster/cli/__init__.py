"""The `semel` command line (`main` dispatches; each module adds one concern's commands)."""
