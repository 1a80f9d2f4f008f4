"""TAC KBP measures, identical to neleval's: prepare-tac15 spans, the measures, the score table."""
