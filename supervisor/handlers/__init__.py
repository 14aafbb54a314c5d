"""Built-in handlers for the demo config; each knows nothing about the supervisor's internals."""
