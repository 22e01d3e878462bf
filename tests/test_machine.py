"""jaxsr.machine: the CPU description that benchmark and experiment records carry."""

import os
import platform

from jaxsr.machine import cpu_description


def test_cpu_description_names_the_model_and_on_linux_its_family_and_caches():
    text = cpu_description()
    assert text and "\n" not in text
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            info = f.read()
        names = [line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")]
        if names:
            assert text.startswith(names[0])
        if "cpu family" in info:
            assert ", family " in text
        if os.path.isdir("/sys/devices/system/cpu/cpu0/cache"):
            assert " L1" in text or " L2" in text
    else:
        assert text == (platform.processor() or platform.machine())
