"""Model registry: `create_model(name, num_classes, **kwargs)` and `list_models()`."""
from robustlab.models.registry import create_model, list_models, register_model, require_model

# Importing a family module registers its models.
from robustlab.models import (  # noqa: F401,E402
    airbench,
    coteach_cnn,
    convnext,
    preact_resnet,
    resnet,
    resnet_cifar,
    se_resnet80,
    small,
    vgg,
    vit,
)

__all__ = ["create_model", "list_models", "register_model", "require_model"]
