"""Model references that read the MLflow registry (an MLflow store is opened: seconds)."""

import pytest

from genalign.models.refs import ModelRefError, resolve


def test_unregistered_mlflow_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelRefError, match="mlflow://models/no-such-model@champion: not in the registry"):
        resolve("mlflow://models/no-such-model@champion", cache=tmp_path)
