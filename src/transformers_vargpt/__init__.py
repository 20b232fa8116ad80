"""transformers-vargpt: VARGPT as a native transformers / diffusers / TRL model.

Importing the package registers `vargpt_llava` with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_vargpt import VargptConfig, VargptVQVAEConfig
from .generation_vargpt import VargptImageGenerationOutput, VargptInterleavedOutput
from .modeling_vargpt import VargptForConditionalGeneration, VargptModel, VargptPreTrainedModel
from .modeling_vargpt_vqvae import VargptVQVAE
from .processing_vargpt import VARGPTLlavaProcessor, VargptProcessor

AutoConfig.register(VargptConfig.model_type, VargptConfig, exist_ok=True)
AutoConfig.register(VargptVQVAEConfig.model_type, VargptVQVAEConfig, exist_ok=True)
AutoModel.register(VargptConfig, VargptModel, exist_ok=True)
AutoModel.register(VargptVQVAEConfig, VargptVQVAE, exist_ok=True)
AutoModelForImageTextToText.register(VargptConfig, VargptForConditionalGeneration, exist_ok=True)
AutoProcessor.register(VargptConfig, VargptProcessor, exist_ok=True)
# The released processor_config.json names "VARGPTLlavaProcessor"; AutoProcessor resolves registered classes by name.
AutoProcessor.register(VargptConfig.model_type, VARGPTLlavaProcessor, exist_ok=True)

__version__ = "0.1.0"

__all__ = [
    "VargptConfig",
    "VargptVQVAEConfig",
    "VargptModel",
    "VargptPreTrainedModel",
    "VargptForConditionalGeneration",
    "VargptVQVAE",
    "VargptProcessor",
    "VARGPTLlavaProcessor",
    "VargptImageGenerationOutput",
    "VargptInterleavedOutput",
]
