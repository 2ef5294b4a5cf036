"""Model sources and the `--model` registry; every model takes [0, 1] pixels."""
from .base import LoadedModel, ModelInfo, Normalized, Preprocess, state_dict_sha256
from .checkpoints import extract_state_dict, load_file, save_checkpoint
from .registry import ModelEntry, check_model, create_model, register_model, registered_models
from .sources import ModelOptions, torchvision_names

__all__ = ["LoadedModel", "ModelEntry", "ModelInfo", "ModelOptions", "Normalized", "Preprocess",
           "check_model", "create_model", "extract_state_dict", "load_file", "register_model", "registered_models",
           "save_checkpoint", "state_dict_sha256", "torchvision_names"]
