"""How the loader turns stored records into uint8 crops: base.py (the `Decoder` every decoder subclasses),
registry.py (the decoders by name), one module per decoder (cpu.py: copy the crops from the stored pixels)."""
