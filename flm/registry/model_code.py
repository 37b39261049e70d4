"""The script MLflow runs to build the model when it loads it ("models from code").

Not imported by ``flm``: MLflow executes this file at ``log_model`` and at ``load_model`` time,
where registering the model object is this file's whole purpose.
"""

from mlflow.models import set_model

from flm.registry.pyfunc import FLMTextModel

set_model(FLMTextModel())
