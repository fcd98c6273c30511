"""TheWorld: Gemma 3 fused with the Cosmos-Predict2 world model, as a native transformers model.

``import theworld`` registers `TheWorldConfig`, `TheWorldForConditionalGeneration` and `TheWorldProcessor` with
transformers' Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForImageTextToText``,
``AutoModelForCausalLM``, ``AutoProcessor``), so that checkpoints load without ``trust_remote_code``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from . import checkpoint_theworld
from .configuration_theworld import THEWORLD_VERSION, TheWorldConfig, TheWorldEncoderConfig
from .modeling_theworld import (
    TheWorld,
    TheWorldForConditionalGeneration,
    TheWorldModel,
    TheWorldPreTrainedModel,
    TheWorldProjector,
)
from .processing_theworld import TheWorldProcessor

__version__ = THEWORLD_VERSION

AutoConfig.register("theworld", TheWorldConfig, exist_ok=True)
AutoConfig.register("theworld_world_encoder", TheWorldEncoderConfig, exist_ok=True)
AutoModel.register(TheWorldConfig, TheWorldForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(TheWorldConfig, TheWorldForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(TheWorldConfig, TheWorldForConditionalGeneration, exist_ok=True)
AutoProcessor.register(TheWorldConfig, TheWorldProcessor, exist_ok=True)


def _write_model_card(model, folder, kind, state) -> None:
    from .hub import write_model_card

    write_model_card(model, folder, kind, state)


# The model card lives outside the remote-code files: the package adds it to every save.
if _write_model_card not in checkpoint_theworld.SAVE_HOOKS:
    checkpoint_theworld.SAVE_HOOKS.append(_write_model_card)

__all__ = [
    "TheWorld",
    "TheWorldConfig",
    "TheWorldEncoderConfig",
    "TheWorldForConditionalGeneration",
    "TheWorldModel",
    "TheWorldPreTrainedModel",
    "TheWorldProcessor",
    "TheWorldProjector",
    "__version__",
]
