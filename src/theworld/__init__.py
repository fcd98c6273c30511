"""TheWorld: Gemma 3 fused with the Cosmos-Predict2 world model, as a native transformers model.

``import theworld`` registers ``TheWorldConfig``, ``TheWorld`` and ``TheWorldProcessor`` with transformers' Auto
classes (``AutoConfig``, ``AutoModel``, ``AutoModelForImageTextToText``, ``AutoProcessor``), so that checkpoints load
without ``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_theworld import THEWORLD_VERSION, TheWorldConfig
from .modeling_theworld import TheWorld, TheWorldProjector
from .processing_theworld import TheWorldProcessor

__version__ = THEWORLD_VERSION

AutoConfig.register("theworld", TheWorldConfig, exist_ok=True)
AutoModel.register(TheWorldConfig, TheWorld, exist_ok=True)
AutoModelForImageTextToText.register(TheWorldConfig, TheWorld, exist_ok=True)
AutoProcessor.register(TheWorldConfig, TheWorldProcessor, exist_ok=True)

__all__ = ["TheWorld", "TheWorldConfig", "TheWorldProcessor", "TheWorldProjector", "__version__"]
