"""Stand-ins for a Triton/Gluon JIT kernel and its compiled kernel, for the launch-cache tests:
``kernel[grid](*args, **options)`` records the JIT launch and returns the compiled kernel, whose
``run(*launch)`` records each cached launch."""


class FakeCompiled:
    function = "cufunction"
    packed_metadata = (8, 1, 0)

    def __init__(self):
        self.calls = []

    def run(self, *args):
        self.calls.append(args)


class FakeKernel:
    def __init__(self):
        self.jit_calls = []  # (grid, args, options)
        self.compiled = FakeCompiled()

    def __getitem__(self, grid):
        def launch(*args, **options):
            self.jit_calls.append((grid, args, options))
            return self.compiled

        return launch
