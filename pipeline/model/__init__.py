"""The trained linker's parts, shared by train, evaluate and link: the ranker and its inputs, model.pt and the model/ folder, the alias table, NIL decisions."""
