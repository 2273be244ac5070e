"""The MLflow pyfunc wrapper: raw text in, label and class probabilities out, nothing else needed."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


def texts_of(model_input) -> list[str]:
    """Accept a DataFrame with a `text` column (or a single column), a Series, a list or a string."""
    if isinstance(model_input, pd.DataFrame):
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        values = model_input[column].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    return ["" if v is None else str(v) for v in values]


class NewsgroupsModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline.classifier import Classifier

        self.classifier = Classifier(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):
        return self.classifier.predict_frame(texts_of(model_input))
