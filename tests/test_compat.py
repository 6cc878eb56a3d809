"""The torchvision guard that lets timm import next to a CPU-only torch."""
import subprocess
import sys
import textwrap


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_import_timm_through_guard_builds_a_model():
    r = run_py("""
        import torch
        from medvit._compat import import_timm
        timm = import_timm()
        m = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=2)
        print(tuple(m.eval()(torch.zeros(1, 1, 32, 32)).shape))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("(1, 2)")


def test_guard_only_acts_when_plain_import_fails():
    # On this CPU torch + CUDA torchvision pair, a bare `import timm` fails on torchvision::nms;
    # with a working torchvision it succeeds. Either way the guard must give a working timm, and
    # it must define the schema only when torchvision's own library did not.
    plain = run_py("import timm")
    guarded = run_py("""
        import torch
        from medvit._compat import import_timm
        import_timm()
        import torchvision
        print("ops", torchvision.extension._has_ops())
        print("nms", torch._C._dispatch_has_kernel("torchvision::nms") or True)
    """)
    assert guarded.returncode == 0, guarded.stderr
    if plain.returncode != 0:
        assert "torchvision::nms" in plain.stderr
        assert "ops False" in guarded.stdout
    else:
        assert "ops True" in guarded.stdout


def test_unrelated_import_errors_are_not_swallowed(monkeypatch):
    import builtins

    from medvit import _compat

    real_import = builtins.__import__

    def failing(name, *a, **k):
        if name == "torchvision":
            raise RuntimeError("something else went wrong")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", failing)
    try:
        _compat.import_torchvision()
    except RuntimeError as err:
        assert "something else" in str(err)
    else:
        raise AssertionError("an unrelated RuntimeError must propagate")
