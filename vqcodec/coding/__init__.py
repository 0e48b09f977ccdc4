"""Bits, without torch: the coding order (``order.py``), the range coder (``entropy.py``) and the
``.vqz`` container (``container.py``), each the code form of a part of ``bitstream_spec/vqz.md``."""
