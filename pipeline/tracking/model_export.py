"""The reported model as an MLflow PyTorch model: inference weights only (no optimiser, flow or
history), with a signature and an input example, loadable anywhere ddfp is installed through
`mlflow.pytorch.load_model("runs:/<run id>/model")`. It maps normalised images to class logits:
B x 3 x H x W float32 (ImageNet statistics) -> B x C x H x W; argmax over C is the class map."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

EXAMPLE_SIZE = 32  # pixels a side of the input example stored with the model (a crop of a real image)


class Logits(nn.Module):
    """A segmenter in eval mode, returning its logits tensor (MLflow and TorchScript want tensors,
    the segmenter returns a structure with its features too)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def save_pytorch_model(model: nn.Module, image: torch.Tensor, num_classes: int, path: Path) -> Path:
    """Write the MLflow model directory of `model` at `path`; `image` (3 x H x W, normalised) gives
    the input example. The signature leaves batch, height and width free."""
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    wrapped = Logits(copy.deepcopy(model).cpu())
    example = image[None, :, :EXAMPLE_SIZE, :EXAMPLE_SIZE].cpu().numpy().astype(np.float32)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
                               outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes, -1, -1))]))
    # Pickled, not MLflow's default torch.export program: export fixes the batch, height and width to
    # the example's, and a segmenter must take any image size.
    mlflow.pytorch.save_model(wrapped, str(path), signature=signature, input_example=example,
                              serialization_format="pickle")
    return path


def register_version(client: Any, run_id: str, name: str, tags: dict[str, str]) -> None:
    """A new version of the registered model `name` from the run's logged model (made on first use)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags=tags)


__all__ = ["Logits", "register_version", "save_pytorch_model"]
