#!/usr/bin/env python3
"""Seeded generator of realistic pod logs for weft's benchmarks.

Writes a kubelet /var/log/pods tree (CRI format, files rotated the way the
kubelet renames them) of about --size bytes, from templates with variable
fields in the proportions of an ML cluster:

  trainer ranks  45 %  Hugging Face loss dicts, tqdm bars, Python logging,
                       NCCL INFO/WARN, CUDA warnings, now and then a traceback
  inference      30 %  JSON access logs of an OpenAI-style server
  system         25 %  Loghub-style HDFS, Spark and ZooKeeper lines

A rare term (RARE) is planted in exactly 100 lines spread over the corpus,
for the rare-term search figure. A manifest.json beside the tree says what
was written. Same seed, same bytes.

  benches/gen_logs.py --out /tmp/weft-bench --size 1G [--seed 1]
"""
import argparse
import json
import os
import random
import shutil
from datetime import datetime, timedelta, timezone

RARE = "zq7rareterm"
ROTATE_BYTES = 32 << 20


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class PodFile:
    """One container's log: 0.log, rotated to 0.log.<stamp> past ROTATE_BYTES."""

    def __init__(self, root, namespace, pod, uid, container):
        self.dir = os.path.join(root, f"{namespace}_{pod}_{uid}", container)
        os.makedirs(self.dir, exist_ok=True)
        self.namespace, self.pod, self.container = namespace, pod, container
        self.path = os.path.join(self.dir, "0.log")
        self.file = open(self.path, "w", encoding="utf-8")
        self.size = 0
        self.rotations = 0
        self.buffer = []

    def write(self, text):
        self.buffer.append(text)
        self.size += len(text)
        if len(self.buffer) >= 512:
            self.flush()
        if self.size >= ROTATE_BYTES:
            self.flush()
            self.file.close()
            self.rotations += 1
            os.rename(self.path, f"{self.path}.20261125-{self.rotations:06d}")
            self.file = open(self.path, "w", encoding="utf-8")
            self.size = 0

    def flush(self):
        if self.buffer:
            self.file.write("".join(self.buffer))
            self.buffer.clear()

    def close(self):
        self.flush()
        self.file.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    target = parse_size(args.size)
    rng = random.Random(args.seed)
    root = os.path.join(args.out, "pod-logs")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)

    def uid():
        return "%08x-%04x-4%03x-a%03x-%012x" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(12), rng.getrandbits(12), rng.getrandbits(48))

    trainers = [PodFile(root, "ml", f"{run}-worker-{rank}", uid(), "pytorch") for run in ("llama-pretrain", "bert-sft") for rank in range(8)]
    servers = [PodFile(root, "serving", f"vllm-llama-7d9f8c6b5-{s}", uid(), "server") for s in ("x2k4q", "b7m2p", "k9d3w", "q4t8z")]
    systems = [PodFile(root, "data", name, uid(), name.split("-")[0]) for name in ("hdfs-datanode-0", "hdfs-datanode-1", "spark-executor-1", "zookeeper-0")]
    start = datetime(2026, 11, 25, 8, 0, 0, tzinfo=timezone.utc)
    # Lines are ~150 bytes: the corpus spans about 1 ms of log time per line.
    est_lines = max(target // 150, 1)
    rare_at = set(rng.sample(range(est_lines), min(100, est_lines)))
    step = {p.pod: 0 for p in trainers}
    loss = {p.pod: 2.5 for p in trainers}
    written = lines = rare = 0
    t = start
    levels = ["INFO"] * 17 + ["WARN", "ERROR", "DEBUG"]
    while written < target:
        t += timedelta(microseconds=rng.randint(200, 1800))
        stamp = t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"
        r = rng.random()
        if r < 0.45:
            f = trainers[rng.randrange(len(trainers))]
            k = rng.random()
            s = step[f.pod]
            if k < 0.35:
                step[f.pod] = s = s + 1
                msg = f" {s * 100 // 50000:2d}%|{'█' * (s * 10 // 50000):<10}| {s}/50000 [{s // 60:02d}:{s % 60:02d}<9:41:07,  1.42it/s]"
                stream = "stderr"
            elif k < 0.55:
                loss[f.pod] = max(0.2, loss[f.pod] * 0.9995 + rng.uniform(-0.01, 0.01))
                msg = "{'loss': %.4f, 'grad_norm': %.4f, 'learning_rate': %.4e, 'epoch': %.2f}" % (loss[f.pod], rng.uniform(0.2, 2.5), 3e-4 * (1 - s / 50000), s / 5000)
                stream = "stdout"
            elif k < 0.85:
                msg = "%s - %s - %s - %s" % (
                    t.strftime("%Y-%m-%d %H:%M:%S,") + "%03d" % (t.microsecond // 1000),
                    rng.choice(["__main__", "transformers.trainer", "torch.distributed.run", "datasets.builder", "accelerate.accelerator"]),
                    rng.choice(levels),
                    rng.choice([
                        f"Saving model checkpoint to /ckpt/checkpoint-{s}",
                        f"rank {f.pod[-1]}: dataloader worker {rng.randint(0, 7)} prefetched {rng.randint(1, 64)} batches",
                        f"Gradient accumulation step {rng.randint(1, 8)}/8, tokens seen {rng.randint(10**6, 10**10)}",
                        f"Loading shard {rng.randint(0, 1023):05d}-of-01024 from s3://datasets/pile/train",
                        "Using bf16 mixed precision with torch.autocast",
                    ]),
                )
                stream = "stdout"
            elif k < 0.97:
                msg = rng.choice([
                    f"{f.pod}:{rng.randint(100, 999)}:{rng.randint(100, 999)} [{f.pod[-1]}] NCCL INFO Channel {rng.randint(0, 31):02d}/0 : {rng.randint(0, 7)}[{rng.randint(0, 7)}] -> {rng.randint(0, 7)}[{rng.randint(0, 7)}] via P2P/IPC/read",
                    f"{f.pod}:{rng.randint(100, 999)}:{rng.randint(100, 999)} [{f.pod[-1]}] NCCL WARN Call to ibv_reg_mr failed with error Cannot allocate memory",
                    "/usr/local/lib/python3.10/dist-packages/torch/utils/checkpoint.py:464: UserWarning: torch.utils.checkpoint: the use_reentrant parameter should be passed explicitly.",
                    f"[W{t:%m%d %H:%M:%S}.{rng.randint(0, 999999):06d} ProcessGroupNCCL.cpp:{rng.randint(1000, 4000)}] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS=1 has no effect for point-to-point collectives.",
                ])
                stream = "stderr"
            else:
                for frame in ("Traceback (most recent call last):", '  File "/workspace/train.py", line 212, in <module>', "    main()",
                              '  File "/workspace/data.py", line 88, in __getitem__', "    sample = self.decode(raw)"):
                    f.write(f"{stamp} stderr F {frame}\n")
                    lines += 1
                    written += len(frame) + 40
                msg = f"ValueError: corrupt record {rng.getrandbits(40):x} in shard {rng.randint(0, 1023):05d}"
                stream = "stderr"
        elif r < 0.75:
            f = servers[rng.randrange(len(servers))]
            status = 200 if rng.random() > 0.03 else rng.choice([429, 500, 503])
            msg = json.dumps({
                "ts": stamp[:23] + "Z", "level": "error" if status >= 500 else ("warn" if status == 429 else "info"),
                "msg": "request finished", "method": "POST", "path": rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/embeddings"]),
                "status": status, "prompt_tokens": rng.randint(5, 4000), "completion_tokens": rng.randint(1, 1024),
                "latency_ms": round(rng.uniform(12, 9000), 1), "request_id": "%016x" % rng.getrandbits(64), "model": "llama-3-8b-instruct",
            }, separators=(",", ":"))
            stream = "stdout"
        else:
            f = systems[rng.randrange(len(systems))]
            if f.container == "hdfs":
                msg = rng.choice([
                    f"{t:%y%m%d %H%M%S} {rng.randint(1, 300)} INFO dfs.DataNode$PacketResponder: PacketResponder {rng.randint(0, 2)} for block blk_{rng.getrandbits(62)} terminating",
                    f"{t:%y%m%d %H%M%S} {rng.randint(1, 300)} INFO dfs.DataNode$DataXceiver: Receiving block blk_-{rng.getrandbits(62)} src: /10.250.{rng.randint(0, 255)}.{rng.randint(0, 255)}:{rng.randint(30000, 60000)} dest: /10.250.{rng.randint(0, 255)}.{rng.randint(0, 255)}:50010",
                    f"{t:%y%m%d %H%M%S} {rng.randint(1, 300)} INFO dfs.FSNamesystem: BLOCK* NameSystem.addStoredBlock: blockMap updated: 10.251.{rng.randint(0, 255)}.{rng.randint(0, 255)}:50010 is added to blk_{rng.getrandbits(62)} size {rng.randint(1, 67108864)}",
                ])
            elif f.container == "spark":
                msg = rng.choice([
                    f"{t:%y/%m/%d %H:%M:%S} INFO storage.BlockManager: Found block rdd_{rng.randint(0, 99)}_{rng.randint(0, 999)} locally",
                    f"{t:%y/%m/%d %H:%M:%S} INFO executor.Executor: Finished task {rng.randint(0, 999)}.0 in stage {rng.randint(0, 99)}.0 (TID {rng.randint(0, 99999)}). {rng.randint(900, 3000)} bytes result sent to driver",
                    f"{t:%y/%m/%d %H:%M:%S} WARN scheduler.TaskSetManager: Lost task {rng.randint(0, 999)}.0 in stage {rng.randint(0, 99)}.0: FetchFailed",
                ])
            else:
                msg = rng.choice([
                    f"{t:%Y-%m-%d %H:%M:%S},{rng.randint(0, 999):03d} - INFO  [NIOServerCxn.Factory:0.0.0.0/0.0.0.0:2181:NIOServerCnxn@{rng.randint(800, 1100)}] - Closed socket connection for client /10.10.{rng.randint(0, 255)}.{rng.randint(0, 255)}:{rng.randint(30000, 60000)} which had sessionid 0x{rng.getrandbits(56):x}",
                    f"{t:%Y-%m-%d %H:%M:%S},{rng.randint(0, 999):03d} - WARN  [SendWorker:{rng.randint(1, 5)}:QuorumCnxManager$SendWorker@{rng.randint(600, 700)}] - Interrupted while waiting for message on queue",
                ])
            stream = "stdout"
        if lines in rare_at:
            msg += f" trace={RARE}-{rare}"
            rare += 1
        line = f"{stamp} {stream} F {msg}\n"
        f.write(line)
        written += len(line.encode("utf-8"))
        lines += 1
    for f in trainers + servers + systems:
        f.close()
    manifest = {"bytes": written, "lines": lines, "rare_term": RARE, "rare_lines": rare, "seed": args.seed,
                "start": start.isoformat(), "end": t.isoformat(), "pods": len(trainers + servers + systems)}
    with open(os.path.join(args.out, "manifest.json"), "w") as out:
        json.dump(manifest, out)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
