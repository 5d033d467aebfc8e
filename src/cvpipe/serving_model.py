"""Entry point of the registered pyfunc, logged as MLflow "models from code": MLflow runs this file when it loads
the model. The task comes from the logged ``model_config`` (see :func:`cvpipe.tracking.register_onnx_model`)."""

import mlflow.models

from cvpipe.serving import OnnxVisionModel

mlflow.models.set_model(OnnxVisionModel())
