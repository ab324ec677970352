"""The read side: pure projectors, the SQL that stores their rows, queries, and the runtime."""
