"""The serving side of each task (post-processing of the ONNX outputs, the pyfunc's output schema, what
``cvpipe predict`` writes), one module per task, free of torch so that the served model and ``cvpipe predict``
start without it. Each :class:`cvpipe.tasks.base.Task` inherits its task's serving class."""
