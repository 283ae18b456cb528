"""verl integration. Every module but `register` works without verl installed."""
