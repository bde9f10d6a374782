"""LoRA adapters as the engine sees them: parsed PEFT folders and device slots.

`adapter` reads and validates a PEFT LoRA folder into plain tensors; `slots` keeps every adapter
resident on the device in stacked per-module tensors indexed by slot; `manager` decides which
adapter sits in which slot.
"""

from server.lora.adapter import AdapterError, AdapterWeights, read_adapter
from server.lora.slots import LoraSlots, SlotLinear

__all__ = ["AdapterError", "AdapterWeights", "LoraSlots", "SlotLinear", "read_adapter"]
