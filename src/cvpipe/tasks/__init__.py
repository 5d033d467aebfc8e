"""One module per task: how a model of that task is built, trained, run and scored over prepared arrays."""
