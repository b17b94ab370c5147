"""The C99 runtime (bsvit.h, bsvit.c), installed as package data of bsvit_int so that
`bsvit-firmware` can copy it next to a generated model (bsvit_int.firmware.runtime_dir)."""
