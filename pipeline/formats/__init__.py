"""Readers and writers of files that cross stage boundaries or come from users (mentions, KB, TAC)."""
