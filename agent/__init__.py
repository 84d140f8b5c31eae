"""edge-defender: on-device AWS IoT Device Defender agent."""

__version__ = "0.1.0"
