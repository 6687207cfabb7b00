"""Model zoo: build any registered model by name; importing this package registers the plug-ins."""
from czii_kit.models import resunet, unet_smp  # noqa: F401  (registers the models)
from czii_kit.models.activation import ACTIVATIONS, ProbabilityModel, probabilities
from czii_kit.models.registry import MODELS, build_model, check_input_shape, register_model

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "ProbabilityModel",
    "build_model",
    "check_input_shape",
    "probabilities",
    "register_model",
]
