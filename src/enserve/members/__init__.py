"""Members: one interface over PyTorch eager, TorchScript, torch.export and ONNX Runtime."""

from enserve.members.base import Member, Signature
from enserve.members.loaders import build_torch_module, load_member
from enserve.members.onnx_member import OnnxMember
from enserve.members.torch_member import TorchMember

__all__ = ["Member", "OnnxMember", "Signature", "TorchMember", "build_torch_module", "load_member"]
