__version__ = "0.1.0"

from picserve import torchvision_compat as _torchvision_compat

_torchvision_compat.install()  # before anything imports torchvision (spandrel does): see the module
