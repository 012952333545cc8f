#!/usr/bin/env python3
"""Writes examples/pod-logs/ (a small, realistic kubelet /var/log/pods tree)
and examples/gpu-metrics.prom (the GPU counters of the same node).

A two-rank PyTorch job (Hugging Face Trainer progress lines): rank 0 dies
of a CUDA OOM, rank 1 hits the NCCL watchdog timeout; an inference server
with JSON access logs; a rotated file; a docker json-file pod; a long line
split into CRI P/F segments. Deterministic: run it again, get the same bytes.
"""
import json
import os
import random
import shutil
from datetime import datetime, timedelta, timezone

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pod-logs")
START = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)
rng = random.Random(7)


def ts(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}" + "123Z"


def cri(t, stream, msg, tag="F"):
    return f"{ts(t)} {stream} {tag} {msg}\n"


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)


def trainer_lines(rank, t, steps):
    out = []
    loss = 2.45
    out.append(cri(t, "stderr", f"2026-11-25 10:00:00,101 - torch.distributed.run - INFO - rank {rank}: MASTER_ADDR=train-llama-0.train-llama WORLD_SIZE=2"))
    out.append(cri(t, "stdout", f"[INFO|trainer.py:2134] 2026-11-25 10:00:01,412 >> ***** Running training *****"))
    out.append(cri(t, "stdout", f"[INFO|trainer.py:2135] 2026-11-25 10:00:01,412 >>   Num examples = 120,000"))
    out.append(cri(t, "stdout", f"[INFO|trainer.py:2137] 2026-11-25 10:00:01,413 >>   Total optimization steps = 3,750"))
    out.append(cri(t, "stderr", "NCCL INFO Bootstrap : Using eth0:10.42.1.17<0>"))
    out.append(cri(t, "stderr", "NCCL WARN Could not find real path of /sys/class/net/eth0/device, using default topology"))
    for step in range(1, steps + 1):
        t += timedelta(seconds=4, milliseconds=rng.randint(0, 400))
        loss = max(0.3, loss * 0.985 + rng.uniform(-0.02, 0.02))
        lr = 5e-05 * (1 - step / 3750)
        if step % 10 == 0:
            out.append(cri(t, "stdout", "{'loss': %.4f, 'grad_norm': %.3f, 'learning_rate': %.3e, 'epoch': %.2f}" % (loss, rng.uniform(0.4, 1.6), lr, step / 1250)))
        pct = step * 100 // 3750
        out.append(cri(t, "stderr", f" {pct:2d}%|{'█' * (pct // 10):<10}| {step}/3750 [{step * 4 // 60:02d}:{step * 4 % 60:02d}<4:09:50,  0.25it/s]"))
        if step % 50 == 0:
            out.append(cri(t, "stdout", f"[INFO|trainer.py:3410] 2026-11-25 {t:%H:%M:%S},000 >> Saving model checkpoint to /ckpt/checkpoint-{step}"))
    return out, t


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    # rank 0: rotated file, then the live file ending with a CUDA OOM traceback
    rank0 = os.path.join(ROOT, "ml_train-llama-0_5f1d6c2e-8a4b-4d0e-9a61-0c2b7f3e1a10", "trainer")
    early, t = trainer_lines(0, START, 60)
    write(os.path.join(rank0, "0.log.20261125-100410"), early)
    late = []
    for step in range(61, 181):
        t += timedelta(seconds=4)
        if step % 10 == 0:
            late.append(cri(t, "stdout", "{'loss': %.4f, 'grad_norm': %.3f, 'learning_rate': %.3e, 'epoch': %.2f}" % (1.2 - step / 500, rng.uniform(0.4, 1.6), 5e-05 * (1 - step / 3750), step / 1250)))
        late.append(cri(t, "stderr", f"  {step * 100 // 3750}%|          | {step}/3750 [{step * 4 // 60:02d}:{step * 4 % 60:02d}<4:09:50,  0.25it/s]"))
    t += timedelta(seconds=3)
    traceback = [
        "Traceback (most recent call last):",
        '  File "/workspace/train.py", line 212, in <module>',
        "    main()",
        '  File "/workspace/train.py", line 198, in main',
        "    trainer.train()",
        '  File "/usr/local/lib/python3.10/dist-packages/transformers/trainer.py", line 1859, in train',
        "    return inner_training_loop(",
        '  File "/usr/local/lib/python3.10/dist-packages/torch/nn/modules/module.py", line 1532, in _wrapped_call_impl',
        "    return self._call_impl(*args, **kwargs)",
    ]
    for line in traceback:
        late.append(cri(t, "stderr", line))
    oom = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB "
           "of which 1.23 GiB is free. Process 48213 has 77.86 GiB memory in use. Of the allocated memory 74.12 GiB is allocated "
           "by PyTorch, and 2.31 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try "
           "setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory "
           "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
    # The runtime split this long line: two P segments and an F.
    late.append(cri(t, "stderr", oom[:200], "P"))
    late.append(cri(t, "stderr", oom[200:400], "P"))
    late.append(cri(t, "stderr", oom[400:], "F"))
    late.append(cri(t + timedelta(seconds=1), "stderr", f"E1125 {t + timedelta(seconds=1):%H:%M:%S}.118000 139 torch/distributed/elastic/multiprocessing/api.py:833] failed (exitcode: 1) local_rank: 0 (pid: 48213) of binary: /usr/bin/python3"))
    write(os.path.join(rank0, "0.log"), late)

    # rank 1: runs on, then the NCCL watchdog fires
    rank1 = os.path.join(ROOT, "ml_train-llama-1_9c3e7a1b-2f4d-4b8a-b6e2-5d9f0a4c8e21", "trainer")
    lines, t = trainer_lines(1, START, 180)
    t += timedelta(minutes=10, seconds=2)
    for msg in [
        f"[rank1]:[E1125 {t:%H:%M:%S}.512389 1 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1523, OpType=ALLREDUCE, NumelIn=262144, NumelOut=262144, Timeout(ms)=600000) ran for 600041 milliseconds before timing out.",
        f"[rank1]:[E1125 {t:%H:%M:%S}.512871 1 ProcessGroupNCCL.cpp:1785] [PG ID 0 PG GUID 0(default_pg) Rank 1] Exception (either an error or timeout) detected by watchdog at work: 1523, last enqueued NCCL work: 1523, last completed NCCL work: 1522.",
        f"[rank1]:[E1125 {t:%H:%M:%S}.512890 1 ProcessGroupNCCL.cpp:630] [Rank 1] Some NCCL operations have failed or timed out. Due to the asynchronous nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete data.",
        "terminate called after throwing an instance of 'c10::DistBackendError'",
    ]:
        lines.append(cri(t, "stderr", msg))
    write(os.path.join(rank1, "0.log"), lines)

    # inference server: JSON access logs, a few errors
    server = os.path.join(ROOT, "serving_vllm-llama-7d9f8c-x2k4q_3b8e1f6a-7c2d-4e9b-a1f0-6d4c2b8e9f13", "server")
    lines = []
    t = START
    for i in range(400):
        t += timedelta(milliseconds=rng.randint(200, 2500))
        status = 200 if rng.random() > 0.04 else rng.choice([429, 500, 503])
        entry = {"ts": t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "level": "error" if status >= 500 else ("warn" if status == 429 else "info"),
                 "msg": "request finished", "method": "POST", "path": "/v1/completions", "status": status,
                 "prompt_tokens": rng.randint(20, 900), "completion_tokens": rng.randint(1, 512),
                 "latency_ms": round(rng.uniform(40, 2200), 1), "model": "llama-3-8b-instruct"}
        lines.append(cri(t, "stdout", json.dumps(entry, separators=(",", ":"))))
    write(os.path.join(server, "0.log"), lines)

    # a docker json-file pod (cri-dockerd node)
    gfd = os.path.join(ROOT, "kube-system_gpu-feature-discovery-x7k2p_0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d", "gfd")
    lines = []
    t = START
    for msg in [
        "I1125 10:00:00.000000       1 main.go:66] Starting GPU Feature Discovery",
        "I1125 10:00:00.100000       1 main.go:120] Loading configuration.",
        "W1125 10:00:00.200000       1 nvml.go:88] MIG is not enabled on GPU 0",
        "I1125 10:00:01.000000       1 main.go:230] Writing labels to output file /etc/kubernetes/node-feature-discovery/features.d/gfd",
        "E1125 10:05:00.000000       1 main.go:250] NVML: Xid 79 reported on GPU 00000000:3B:00.0 (GPU has fallen off the bus)",
    ]:
        t += timedelta(seconds=1)
        lines.append(json.dumps({"log": msg + "\n", "stream": "stderr", "time": ts(t)}, separators=(",", ":")) + "\n")
    write(os.path.join(gfd, "0.log"), lines)


GPU_METRICS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu-metrics.prom")


def gpu_metrics():
    """examples/gpu-metrics.prom: dcgm-exporter counters of the node the job
    ran on, every 30 s from 10:00 to 10:25, attributed to pods as weft's
    collector does it. GPU 0/1 hold the two ranks (rank 0 dies at ~10:12,
    rank 1 spins in NCCL until the watchdog at ~10:22), GPU 2 is held by an
    idle notebook and reports Xid 79 at 10:05, GPU 3 serves vLLM."""
    g = random.Random(11)
    holders = [
        ("ml", "train-llama-0", "trainer", "train-llama", "0"),
        ("ml", "train-llama-1", "trainer", "train-llama", "1"),
        ("research", "notebook-ana-0", "jupyter", "notebook-ana", "0"),
        ("serving", "vllm-llama-7d9f8c-x2k4q", "server", "vllm-llama", ""),
    ]
    metrics = [
        ("DCGM_FI_DEV_GPU_UTIL", "gauge", "GPU utilization (in %)."),
        ("DCGM_FI_DEV_FB_USED", "gauge", "Framebuffer memory used (in MiB)."),
        ("DCGM_FI_DEV_FB_FREE", "gauge", "Framebuffer memory free (in MiB)."),
        ("DCGM_FI_DEV_POWER_USAGE", "gauge", "Power draw (in W)."),
        ("DCGM_FI_DEV_GPU_TEMP", "gauge", "GPU temperature (in C)."),
        ("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    ]
    end_rank0 = START + timedelta(minutes=12, seconds=3)
    end_rank1 = START + timedelta(minutes=22, seconds=37)
    rows = {name: [] for name, _, _ in metrics}
    for i in range(51):
        t = START + timedelta(seconds=30 * i)
        ms = int(t.timestamp() * 1000)
        for gpu, (ns, pod, container, run, rank) in enumerate(holders):
            if gpu == 0:
                util, used = (g.uniform(92, 99), 77800) if t < end_rank0 else (0, 0)
            elif gpu == 1:
                util, used = (g.uniform(92, 99), 76500) if t < end_rank0 else ((100, 76500) if t < end_rank1 else (0, 0))
            elif gpu == 2:
                util, used = 0, 1200
            else:
                util, used = g.uniform(25, 70), 71000
            labels = (f'gpu="{gpu}",UUID="GPU-5d2c{gpu}e1a-7b3f-4c1d-9e8a-{gpu}f6b2c4d8e10",device="nvidia{gpu}",'
                      f'modelName="NVIDIA H100 80GB HBM3",Hostname="gpu-node-1"')
            if used:
                labels += f',namespace="{ns}",pod="{pod}",container="{container}",run="{run}",rank="{rank}"'
            power = 70 + util * 6.1 + g.uniform(-8, 8)
            temp = 31 + util * 0.42 + g.uniform(-1, 1)
            xid = 79 if gpu == 2 and t >= START + timedelta(minutes=5) else 0
            values = [round(util), used, 81559 - used, round(power, 3), round(temp), xid]
            for (name, _, _), value in zip(metrics, values):
                rows[name].append(f"{name}{{{labels}}} {value} {ms}\n")
    with open(GPU_METRICS, "w", encoding="utf-8") as f:
        for name, kind, help_text in metrics:
            f.write(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
            f.writelines(rows[name])


if __name__ == "__main__":
    main()
    gpu_metrics()
