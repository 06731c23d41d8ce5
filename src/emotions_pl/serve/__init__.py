"""Stage 3, serve: the LitServe HTTP service over an export folder, its request guard, log and client."""
