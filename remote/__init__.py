"""The stub on the execution host: runs the job under ptrace and phones home."""
