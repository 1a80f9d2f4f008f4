"""Below every stage: config, errors, table schemas, stage bookkeeping, file I/O, the run lock, text folding."""
