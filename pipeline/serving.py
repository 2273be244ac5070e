"""The MLflow pyfunc wrapper: raw text in, label and class probabilities out, nothing else needed."""
from __future__ import annotations

import math
import warnings

import mlflow.models
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException


def texts_of(model_input) -> list[str]:
    """Accept a DataFrame with a `text` column (or a single column), a Series, a list or a string.
    A null is an empty text; anything else but strings is refused (HTTP 400 when served)."""
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        values = model_input[column].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            values[i] = ""
        elif not isinstance(v, str):
            raise MlflowException.invalid_parameter_value(
                f"inputs must be strings (texts to classify): item {i} is {type(v).__name__} {v!r}"
            )
    return values


with warnings.catch_warnings():
    # MLflow asks each PythonModel subclass for type hints as it is defined, on stderr and past any
    # warning filter: this one takes texts in several shapes and checks them itself (texts_of)
    warnings.showwarning = lambda *args, **kwargs: None

    class NewsgroupsModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from pipeline.classifier import Classifier

            self.classifier = Classifier(context.artifacts["model_dir"])

        def predict(self, context, model_input, params=None):
            return self.classifier.predict_frame(texts_of(model_input))


# A logged model is this file plus its artifacts: MLflow runs it to load the model (models from
# code), so nothing is pickled
mlflow.models.set_model(NewsgroupsModel())
