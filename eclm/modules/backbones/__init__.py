"""Built-in backbone families; importing this package registers them."""

from eclm.modules.backbones import convnext, mobilenet, resnet, vit  # noqa: F401
