"""Benchmarks: ``libra-bench`` (:mod:`runtime.bench.cli`) and ``make bench`` (:mod:`runtime.bench.suite`).

- :mod:`runtime.bench.latency`: latency percentiles, throughput, peak memory, pre/infer/post split;
- :mod:`runtime.bench.accuracy`: COCO box AP (points) per backend and the delta to PyTorch;
- :mod:`runtime.bench.peer`: torchvision's ``fasterrcnn_resnet50_fpn``, eager and via its ONNX export;
- :mod:`runtime.bench.report`: markdown tables (MMDeploy's form) and the latency bar chart;
- :mod:`runtime.bench.machine`: CPU, cores, GPU, library versions, process memory.

Nothing is imported here, so ``runtime.bench.latency`` on ONNX Runtime never pulls in torch.
See ``bench/README.md`` for the method.
"""
