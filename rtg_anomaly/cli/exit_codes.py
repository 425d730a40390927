"""Exit codes of ``rtg-anomaly``: 0 success, 1 unexpected failure, 2 bad usage or bad input, 130
interrupted (Ctrl-C or SIGTERM)."""

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C; SIGTERM gives the same
