"""The hardware-in-the-loop rig (`python -m hw run`, issue 10): it builds a lab of network
namespaces (a device under test, an attacker, two LAN peers and a mosquitto broker with
mutual TLS, joined by a bridge; hw/lab.py), runs the real agent on the device (in a
namespace, installed as a service in a systemd-nspawn container, or on a real device over
SSH; hw/dut.py, hw/machine.py), plays declarative attack and benign scenarios against it,
and scores how fast and how cleanly the agent detected them into a JSON and HTML report."""
