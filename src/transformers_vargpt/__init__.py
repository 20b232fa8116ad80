"""transformers-vargpt: VARGPT as a native transformers / diffusers / TRL model.

Importing the package registers `vargpt_llava` with the transformers Auto classes and adds the
`vargpt-image-to-text` pipeline task; it changes nothing of transformers' own tasks, classes or loggers.
`BUNDLED_MODEL` is the path of the small shapes-world VARGPT shipped inside the package (trained here by
`make bundled-model`); it loads offline with the ordinary `from_pretrained` of the model, the processor and
`VargptPipeline`.
"""

import os

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_vargpt import VargptConfig, VargptVarConfig, VargptVQVAEConfig
from .generation_image_vargpt import VargptImageGenerationMixin
from .generation_vargpt import VargptImageGenerationOutput, VargptInterleavedOutput
from .modeling_vargpt import VargptForConditionalGeneration, VargptModel, VargptPreTrainedModel
from .modeling_vargpt_vqvae import VargptVQVAE
from .processing_vargpt import VARGPTLlavaProcessor, VargptProcessor
from .pipelines_transformers import VargptImageToTextPipeline, register_pipelines

AutoConfig.register(VargptConfig.model_type, VargptConfig, exist_ok=True)
AutoConfig.register(VargptVQVAEConfig.model_type, VargptVQVAEConfig, exist_ok=True)
AutoConfig.register(VargptVarConfig.model_type, VargptVarConfig, exist_ok=True)
AutoModel.register(VargptConfig, VargptModel, exist_ok=True)
AutoModel.register(VargptVQVAEConfig, VargptVQVAE, exist_ok=True)
AutoModelForImageTextToText.register(VargptConfig, VargptForConditionalGeneration, exist_ok=True)
AutoProcessor.register(VargptConfig, VargptProcessor, exist_ok=True)
# The released processor_config.json names "VARGPTLlavaProcessor"; AutoProcessor resolves registered classes by name.
AutoProcessor.register(VargptConfig.model_type, VARGPTLlavaProcessor, exist_ok=True)
# save_pretrained writes auto_map and copies the code files: checkpoints load with trust_remote_code=True without us
VargptConfig.register_for_auto_class()
VargptForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
VargptProcessor.register_for_auto_class()
# pipeline("vargpt-image-to-text"): the transformers 4 image-to-text call (transformers 5 removed that task)
register_pipelines()

__version__ = "0.1.0"

# The shapes-world model trained by `python -m transformers_vargpt.bundled.build` (see its README.md).
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundled_model")


def __getattr__(name: str):
    # the diffusers pipeline is imported on first use: importing diffusers is slow (BENCHMARKS.md)
    if name == "VargptPipeline":
        from .pipeline_vargpt import VargptPipeline

        return VargptPipeline
    if name == "VargptPipelineOutput":
        from .pipeline_output import VargptPipelineOutput

        return VargptPipelineOutput
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUNDLED_MODEL",
    "VargptConfig",
    "VargptVQVAEConfig",
    "VargptVarConfig",
    "VargptModel",
    "VargptPreTrainedModel",
    "VargptForConditionalGeneration",
    "VargptVQVAE",
    "VargptProcessor",
    "VARGPTLlavaProcessor",
    "VargptImageGenerationMixin",
    "VargptImageGenerationOutput",
    "VargptInterleavedOutput",
    "VargptImageToTextPipeline",
    "VargptPipeline",
    "VargptPipelineOutput",
]
