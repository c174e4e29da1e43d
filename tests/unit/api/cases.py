# ruff: noqa: E501  (one case per line reads as a table)
"""Bad and good InferenceDeployments shared by the CLI tests and the CRD (schema + CEL) tests.

Each bad case says who must refuse it besides `tokenplane validate`:
- `CRD`: the generated CRD by itself (OpenAPI schema or CEL), so `kubectl apply` refuses it without the CLI;
- `CLI`: only rules that need the GPU catalog, the model's shape, the source URI grammar, a regex per map key or a loop over a list field
  (beyond the CEL cost budget); the operator applies them at reconcile and reports a Stalled condition;
- `SERVER`: the API server or kubectl outside the CRD (names, namespaces, metadata limits, what JSON cannot hold).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

BASE: dict[str, Any] = {
    "apiVersion": "tokenplane.io/v1alpha1",
    "kind": "InferenceDeployment",
    "metadata": {"name": "m"},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192},
        "hardware": {"vmSize": "Standard_NC40ads_H100_v5"},
        "scaling": {"minReplicas": 1, "maxReplicas": 2},
    },
}

Who = Literal["CRD", "CLI", "SERVER"]


def with_(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """BASE (or `base`) with the dotted path set to value."""
    body = copy.deepcopy(base or BASE)
    node = body
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return body


def spec(**blocks: Any) -> dict[str, Any]:
    """BASE with whole spec blocks replaced."""
    body = copy.deepcopy(BASE)
    body["spec"].update(blocks)
    return body


@dataclass(frozen=True)
class Case:
    """A bad document: the field path and a fragment of the message validate must print, and who else refuses it."""

    id: str
    body: dict[str, Any]
    path: str
    fragment: str
    who: Who


ND96 = "Standard_ND96isr_H100_v5"
# deploy/examples/internal-copilot-mig.yaml's shape: MIG3g on a 1-GPU H100 NVL VM, 2 slices (replicas) per node.
_MIG_POOL = {"vmSize": "Standard_NC40ads_H100_v5", "migProfile": "MIG3g", "nodePool": {"managed": {"maxNodes": 2}}}
# Pipeline parallel across two 8-GPU VMs: one replica takes 2 nodes.
_TWO_VMS = {
    "engine": {"tensorParallelSize": 8, "pipelineParallelSize": 2},
    "hardware": {"vmSize": ND96, "gpusPerReplica": 16},
}
_BYO = {"nodeSelector": {"agentpool": "gpu"}}
_CPU = {"accelerator": "cpu"}

MISTAKES = [
    Case("min > max replicas", with_("spec.scaling", {"minReplicas": 3, "maxReplicas": 2}), "spec.scaling.minReplicas", "exceeds maxReplicas", "CRD"),
    Case("schedule minimum above maxReplicas", with_("spec.scaling", {"minReplicas": 1, "maxReplicas": 2, "schedule": [{"days": "1-5", "start": "08:00", "end": "18:00", "minReplicas": 9}]}), "spec.scaling.schedule[0].minReplicas", "minReplicas (9) exceeds maxReplicas (2)", "CLI"),
    Case("MIG on a SKU without MIG", with_("spec.hardware", {"vmSize": "Standard_NV36ads_A10_v5", "migProfile": "MIG1g"}), "spec.hardware.migProfile", "does not support MIG", "CLI"),
    Case("TP x PP != GPUs", with_("spec.engine", {"tensorParallelSize": 2, "pipelineParallelSize": 2}), "spec.hardware.gpusPerReplica", "must equal tensorParallelSize x pipelineParallelSize", "CRD"),
    Case("unknown quantization", with_("spec.model.quantization", "int3"), "spec.model.quantization", "'int3'", "CRD"),
    Case("bad source URI", with_("spec.model.source", "ftp://models/llama"), "spec.model.source", "expected hf://ORG/NAME or ORG/NAME", "CRD"),
    Case("negative context", with_("spec.model.maxModelLen", -8), "spec.model.maxModelLen", "greater than or equal to 16", "CRD"),
    Case("unknown field with a hint", with_("spec.scaling.maxReplica", 3), "spec.scaling.maxReplica", "did you mean 'maxReplicas'", "CRD"),
    Case("unknown top-level spec field", with_("spec.replicas", 3), "spec.replicas", "unknown field", "CRD"),
    Case("a field one level off", with_("spec.cache", {"enabled": True}), "spec.cache", "unknown field here; move it to spec.endpoint.cache", "CRD"),
    Case("an engine field under endpoint", with_("spec.endpoint.dtype", "float16"), "spec.endpoint.dtype", "move it to spec.model.dtype", "CRD"),
    Case("missing model", {**BASE, "spec": {"hardware": {"accelerator": "cpu"}}}, "spec.model", "required", "CRD"),
    Case("unknown VM size", with_("spec.hardware.vmSize", "Standard_D4s_v5"), "spec.hardware.vmSize", "not a GPU VM size", "CLI"),
    # Validate accepted these; the pods would load the weights and crash (vLLM refuses a KV cache without room for one sequence).
    Case("weights beyond the MIG slice", with_("spec.hardware", {"vmSize": "Standard_ND96isr_H100_v5", "migProfile": "MIG1g"}), "spec.hardware.migProfile", "(a MIG1g slice, weights bf16", "CLI"),
    Case("LoRA slots beyond the MIG slice", spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192}, lora={"maxAdaptersPerReplica": 64, "maxRank": 128, "adapters": [{"name": "a", "source": "pvc://adapters/a"}]}, hardware={"vmSize": "Standard_NC24ads_A100_v4", "migProfile": "MIG3g"}), "spec.hardware.migProfile", "44.0 GiB of it LoRA slots for 64 adapters x rank 128), which holds 33.5 GiB: lower spec.lora.maxAdaptersPerReplica or spec.lora.maxRank", "CLI"),
    Case("weights beyond the GPU", with_("spec.model.source", "hf://meta-llama/Llama-3.1-70B-Instruct"), "spec.hardware.vmSize", "needs 134.1 GiB a replica on Standard_NC40ads_H100_v5 as specified (1 GPU(s), weights bf16, maxModelLen 8,192), which holds 84.2 GiB: choose a larger vmSize or more gpusPerReplica, quantize (spec.model.quantization: fp8), lower maxModelLen", "CLI"),
    Case("context beyond the GPU", with_("spec.model.maxModelLen", 131072, with_("spec.model.source", "hf://meta-llama/Llama-3.1-70B-Instruct", with_("spec.model.quantization", "fp8"))), "spec.hardware.vmSize", "or more gpusPerReplica, lower maxModelLen", "CLI"),  # fp8 already: no quantize hint
    Case("sequences beyond a step's tokens", spec(engine={"maxNumSeqs": 4096}, hardware={"vmSize": "Standard_NC24ads_A100_v4"}), "spec.engine.maxNumSeqs", "4,096 sequences exceed the 2,048 tokens one engine step schedules (vLLM's default max_num_batched_tokens on Standard_NC24ads_A100_v4)", "CLI"),
    Case("sequences beyond a MIG slice's step", spec(engine={"maxNumSeqs": 4096}, hardware={"vmSize": "Standard_NC40ads_H100_v5", "migProfile": "MIG3g"}), "spec.engine.maxNumSeqs", "set spec.engine.extraArgs.max_num_batched_tokens to at least 4,096", "CLI"),
    Case("70B on one GPU of a four-GPU VM", spec(model={"source": "hf://meta-llama/Llama-3.1-70B-Instruct", "maxModelLen": 8192}, hardware={"vmSize": "Standard_NC96ads_A100_v4"}), "spec.hardware.vmSize", "needs 134.1 GiB a replica on Standard_NC96ads_A100_v4 as specified (1 GPU(s)", "CLI"),
    Case("8B on a tenth of a GPU", spec(hardware={"vmSize": "Standard_NC24ads_A100_v4", "gpuFraction": 0.1}), "spec.hardware.gpuFraction", "(a 0.1 share of one GPU, weights bf16, maxModelLen 8,192), which holds 7.2 GiB", "CLI"),
    Case("step below the context without chunked prefill", spec(engine={"enableChunkedPrefill": False, "extraArgs": {"max_num_batched_tokens": 2048}}), "spec.engine.extraArgs.max_num_batched_tokens", "2,048 tokens a step is below maxModelLen 8,192 with enableChunkedPrefill false", "CLI"),
    Case("TP beyond one node", spec(engine={"tensorParallelSize": 2}, hardware={"vmSize": "Standard_NC40ads_H100_v5", "gpusPerReplica": 2}), "spec.engine.tensorParallelSize", "exceeds the 1 GPU(s)", "CLI"),
    Case("scale to zero not enabled", with_("spec.scaling", {"minReplicas": 0, "maxReplicas": 2}), "spec.scaling.minReplicas", "scaleToZero.enabled", "CRD"),
    Case("MIG with several GPUs", with_("spec.hardware", {"vmSize": ND96, "migProfile": "MIG3g", "gpusPerReplica": 2}), "spec.hardware.gpusPerReplica", "exactly one slice", "CRD"),
    Case("CPU run with a VM size", with_("spec.hardware", {"accelerator": "cpu", "vmSize": "Standard_NC40ads_H100_v5"}), "spec.hardware.vmSize", "provisions no VM", "CRD"),
    Case("wrong type", with_("spec.engine.maxNumSeqs", "many"), "spec.engine.maxNumSeqs", "expected an integer", "CRD"),
    Case("draft model missing", with_("spec.engine.speculativeDecoding", {"method": "draftModel"}), "spec.engine.speculativeDecoding.draftModel", "needs a draftModel", "CRD"),
    Case("duplicate LoRA names", with_("spec.lora.adapters", [{"name": "a", "source": "/a"}, {"name": "a", "source": "/b"}]), "spec.lora.adapters[1].name", "used twice", "CRD"),
    Case("entra without tenant", with_("spec.endpoint.auth", {"mode": "entraId", "entraAudience": "api://x"}), "spec.endpoint.auth.entraTenantId", "needs entraTenantId", "CRD"),
    Case("wrong kind", {**BASE, "kind": "Deployment"}, "kind", "expected InferenceDeployment", "SERVER"),
    Case("bad MIG profile name", with_("spec.hardware.migProfile", "MIG5g"), "spec.hardware.migProfile", "'MIG5g'", "CRD"),
    # names and metadata
    Case("upper-case name", with_("metadata.name", "MyModel"), "metadata.name", "lowercase letters", "CRD"),
    Case("underscore in name", with_("metadata.name", "my_model"), "metadata.name", "DNS-1035", "CRD"),
    Case("emoji in name", with_("metadata.name", "llama-🦙"), "metadata.name", "DNS-1035", "CRD"),
    Case("slash in name", with_("metadata.name", "team/llama"), "metadata.name", "DNS-1035", "CRD"),
    Case("name starts with a digit", with_("metadata.name", "8b-chat"), "metadata.name", "starting with a letter", "CRD"),
    Case("name of 48 characters", with_("metadata.name", "a" * 48), "metadata.name", "at most 47 fit", "CRD"),
    Case("no name", {**BASE, "metadata": {"namespace": "ai"}}, "metadata.name", "needs a name", "SERVER"),
    Case("bad namespace", with_("metadata.namespace", "AI_team"), "metadata.namespace", "not a namespace name", "SERVER"),
    Case("label value with a space", with_("metadata.labels", {"team": "ml platform"}), "metadata.labels.team", "not a label value", "SERVER"),
    Case("numeric label value", with_("metadata.labels", {"tier": 1}), "metadata.labels.tier", "quote", "SERVER"),
    Case("annotations over 256 KiB", with_("metadata.annotations", {"notes": "x" * (256 * 1024)}), "metadata.annotations", "256 KiB", "SERVER"),
    Case("metadata is a list", {**BASE, "metadata": ["m"]}, "metadata", "must be a mapping", "SERVER"),
    Case("other API version", {**BASE, "apiVersion": "tokenplane.io/v1beta1"}, "apiVersion", "expected tokenplane.io/v1alpha1", "SERVER"),
    # strict typing at the edge
    Case("quoted integer", with_("spec.scaling.maxReplicas", "8"), "spec.scaling.maxReplicas", "remove the quotes", "CRD"),
    Case("fractional replicas", with_("spec.scaling.maxReplicas", 2.5), "spec.scaling.maxReplicas", "expected an integer, got the number 2.5", "CRD"),
    Case("quoted boolean", with_("spec.engine.enablePrefixCaching", "true"), "spec.engine.enablePrefixCaching", "expected true or false", "CRD"),
    Case("spec is a string", {**BASE, "spec": "llama"}, "spec", "expected a mapping of fields", "CRD"),
    Case("model is a list", with_("spec.model", ["hf://a/b"]), "spec.model", "expected a mapping of fields", "CRD"),
    Case("zone listed twice", with_("spec.hardware.zones", ["1", "2", "1"]), "spec.hardware.zones[2]", "listed twice", "CRD"),
    Case("zones as numbers", with_("spec.hardware.zones", [1, 2]), "spec.hardware.zones[0]", "'1', '2' or '3'", "CRD"),
    Case("NaN spot price", with_("spec.hardware.spot", {"enabled": True, "maxPrice": float("nan")}), "spec.hardware.spot.maxPrice", "not a finite number", "SERVER"),
    Case("infinite spot price", with_("spec.hardware.spot", {"enabled": True, "maxPrice": float("inf")}), "spec.hardware.spot.maxPrice", "not a finite number", "SERVER"),
    Case("NaN inside extraArgs", with_("spec.engine.extraArgs", {"seed": float("nan")}), "spec.engine.extraArgs.seed", "not a finite number", "SERVER"),
    Case("negative spot price", with_("spec.hardware.spot", {"enabled": True, "maxPrice": -2}), "spec.hardware.spot.maxPrice", "-1 for on-demand", "CRD"),
    Case("port out of range", with_("spec.endpoint.port", 70000), "spec.endpoint.port", "less than or equal to 65535", "CRD"),
    Case("GPU memory over 1", with_("spec.engine.gpuMemoryUtilization", 1.5), "spec.engine.gpuMemoryUtilization", "less than or equal to 0.99", "CRD"),
    Case("zero speculative tokens", with_("spec.engine.speculativeDecoding", {"method": "ngram", "numSpeculativeTokens": 0}), "spec.engine.speculativeDecoding.numSpeculativeTokens", "greater than or equal to 1", "CRD"),
    # formats, without regexes in the message
    Case("toleration without effect", spec(hardware={"vmSize": "Standard_NC40ads_H100_v5", "nodePool": {"existing": {**_BYO, "tolerationsForTaints": ["sku=gpu"]}}}), "spec.hardware.nodePool.existing.tolerationsForTaints[0]", "key=value:Effect", "CRD"),
    Case("toleration effect typo", spec(hardware={"vmSize": "Standard_NC40ads_H100_v5", "nodePool": {"existing": {**_BYO, "tolerationsForTaints": ["sku=gpu:NoSchedul"]}}}), "spec.hardware.nodePool.existing.tolerationsForTaints[0]", "NoSchedule, PreferNoSchedule or NoExecute", "CRD"),
    Case("node selector key with a space", spec(hardware={"vmSize": "Standard_NC40ads_H100_v5", "nodePool": {"existing": {"nodeSelector": {"agent pool": "gpu"}}}}), "spec.hardware.nodePool.existing.nodeSelector.agent pool", "not a label key", "CLI"),  # the CRD cannot afford a regex per map key; KubeRay's pods would be rejected
    Case("numeric node selector", spec(hardware={"vmSize": "Standard_NC40ads_H100_v5", "nodePool": {"existing": {"nodeSelector": {"gpu": 1}}}}), "spec.hardware.nodePool.existing.nodeSelector.gpu", "expected a string", "CRD"),
    Case("bad allowed namespace", with_("spec.endpoint.allowedNamespaces", ["Team_A"]), "spec.endpoint.allowedNamespaces[0]", "a DNS label", "CRD"),
    Case("served name with a space", with_("spec.model.servedName", "my model"), "spec.model.servedName", "no spaces", "CRD"),
    Case("session header with a space", with_("spec.routing.sessionHeader", "x session"), "spec.routing.sessionHeader", "an HTTP header name", "CRD"),
    Case("secret name with upper case", with_("spec.model.accessSecretRef", {"name": "HF_Token"}), "spec.model.accessSecretRef.name", "a Kubernetes object name", "CRD"),
    Case("upper-case adapter name", with_("spec.lora.adapters", [{"name": "Sales", "source": "/a"}]), "spec.lora.adapters[0].name", "an adapter name", "CRD"),
    Case("VM size in lower case", with_("spec.hardware.vmSize", "standard_nc40ads_h100_v5"), "spec.hardware.vmSize", "an Azure VM size", "CRD"),
    Case("empty source", with_("spec.model.source", ""), "spec.model.source", "at least 1 character", "CRD"),
    Case("empty tenant", with_("spec.endpoint.auth", {"mode": "entraId", "entraTenantId": "", "entraAudience": "api://x"}), "spec.endpoint.auth.entraTenantId", "at least 1 character", "CRD"),
    # the serving contract's rules, at the API layer
    Case("extraArgs sets a typed key", with_("spec.engine.extraArgs", {"max_model_len": 4096}), "spec.engine.extraArgs", "spec.model.maxModelLen", "CRD"),
    Case("extraArgs names no vLLM argument", with_("spec.engine.extraArgs", {"max_num_batched_tokenz": 4096}), "spec.engine.extraArgs", "did you mean 'max_num_batched_tokens'?", "CLI"),
    Case("extraArgs in kebab case", with_("spec.engine.extraArgs", {"kv-cache-dtype": "fp8"}), "spec.engine.extraArgs", "did you mean 'kv_cache_dtype'?", "CLI"),
    Case("extraArgs removed from vLLM", with_("spec.engine.extraArgs", {"swap_space": 4}), "spec.engine.extraArgs", "vLLM has no engine argument 'swap_space'", "CLI"),
    Case("extraArgs sets vLLM's server api_key", with_("spec.engine.extraArgs", {"api_key": "s3cret"}), "spec.engine.extraArgs", "'api_key' configures vLLM's own HTTP server, which does not run under Ray Serve (spec.endpoint.auth sets who may call", "CLI"),
    Case("extraArgs sets vLLM's server TLS and port", with_("spec.engine.extraArgs", {"port": 9000, "ssl_certfile": "/tls/cert.pem"}), "spec.engine.extraArgs", "(spec.endpoint.port sets the Service's port); 'ssl_certfile' configures", "CLI"),
    Case("extraArgs data parallelism in a replica", with_("spec.engine.extraArgs", {"data_parallel_size": 4}), "spec.engine.extraArgs", "'data_parallel_size' 4 would start 4 engines", "CLI"),
    Case("extraArgs sets the model", with_("spec.engine.extraArgs", {"model": "x", "seed": 4}), "spec.engine.extraArgs", "remove the key", "CRD"),
    Case("batch on a cluster without its Redis", with_("spec.batch", {"enabled": True, "store": "az://acct/batch/jobs"}), "spec.batch.redisSecretRef", "a cluster deployment with batch enabled needs it", "CLI"),
    Case("spot price without spot", with_("spec.hardware.spot", {"maxPrice": 2.5}), "spec.hardware.spot.maxPrice", "set enabled: true, or remove maxPrice", "CRD"),
    Case("extraArgs step budget as words", with_("spec.engine.extraArgs", {"max_num_batched_tokens": "lots"}), "spec.engine.extraArgs.max_num_batched_tokens", "expected an integer, got 'lots'", "CLI"),
    Case("extraArgs step budget of zero", with_("spec.engine.extraArgs", {"max_num_batched_tokens": 0}), "spec.engine.extraArgs.max_num_batched_tokens", "must be at least 1", "CLI"),
    Case("extraArgs flag as a sentence", with_("spec.engine.extraArgs", {"trust_remote_code": "yes please"}), "spec.engine.extraArgs.trust_remote_code", "expected true or false", "CLI"),
    Case("extraArgs choice vLLM lacks", with_("spec.engine.extraArgs", {"scheduling_policy": "lifo"}), "spec.engine.extraArgs.scheduling_policy", "fcfs, priority", "CLI"),
    Case("extraArgs memory share", with_("spec.engine.extraArgs", {"gpu_memory_utilization": 1.7}), "spec.engine.extraArgs", "spec.engine.gpuMemoryUtilization", "CRD"),
    Case("context below the serving minimum", with_("spec.model.maxModelLen", 8), "spec.model.maxModelLen", "greater than or equal to 16", "CRD"),
    Case("queue depth above the batch", with_("spec.engine.maxNumSeqs", 4), "spec.scaling.targetQueueDepth", "exceeds engine.maxNumSeqs", "CRD"),
    Case("prompt lookup for eagle", with_("spec.engine.speculativeDecoding", {"method": "eagle", "draftModel": "hf://a/b", "promptLookupMax": 4}), "spec.engine.speculativeDecoding.promptLookupMax", "only to method ngram", "CRD"),
    Case("KV connector vLLM lacks", with_("spec.disaggregation", {"enabled": True, "kvConnector": "NoSuchConnector"}), "spec.disaggregation.kvConnector", "input should be 'NixlConnector', 'NixlPullConnector' or 'NixlPushConnector'", "CRD"),
    Case("LoRA rank vLLM lacks", with_("spec.lora.maxRank", 12), "spec.lora.maxRank", "12", "CRD"),
    # Azure Blob sources: one grammar with the serving loader; what a regex cannot say is the CLI's
    Case("secret on a pvc source", with_("spec.model", {"source": "pvc://weights/llama", "accessSecretRef": {"name": "x"}}), "spec.model.accessSecretRef", "remove it for pvc://", "CRD"),
    Case("blob container with a double hyphen", with_("spec.model.source", "az://acct/my--models/llama"), "spec.model.source", "expected hf://ORG/NAME", "CRD"),
    Case("abfss on the blob host", with_("spec.model.source", "abfss://models@acct.blob.core.windows.net/x"), "spec.model.source", "expected hf://ORG/NAME", "CRD"),
    Case("blob container over 63 characters", with_("spec.model.source", "az://acct/" + "a" * 64 + "/x"), "spec.model.source", "expected hf://ORG/NAME", "CRD"),
    Case("hyphenated blob container over 63 characters", with_("spec.model.source", "az://acct/" + "a-" * 32 + "a/x"), "spec.model.source", "container: 3-63", "CLI"),
    Case("adapter from the Hub", with_("spec.lora.adapters", [{"name": "a", "source": "hf://org/sql-lora"}]), "spec.lora.adapters[0].source", "not Hugging Face", "CRD"),  # the serving contract loads directories only
    Case("blob path climbing out", with_("spec.lora.adapters", [{"name": "a", "source": "az://acct/models/../x"}]), "spec.lora.adapters[0].source", "may not contain '..'", "CLI"),
    # conflicting fields: both named, and the way out
    Case("pipeline parallel with MIG", spec(engine={"pipelineParallelSize": 2}, hardware={"vmSize": ND96, "migProfile": "MIG3g"}), "spec.engine.pipelineParallelSize", "remove hardware.migProfile", "CRD"),
    Case("tensor parallel with a GPU fraction", spec(engine={"tensorParallelSize": 2}, hardware={"vmSize": ND96, "gpuFraction": 0.5}), "spec.engine.tensorParallelSize", "remove hardware.gpuFraction", "CRD"),
    Case("MIG and a fraction", with_("spec.hardware", {"vmSize": ND96, "migProfile": "MIG3g", "gpuFraction": 0.5}), "spec.hardware.gpuFraction", "not both", "CRD"),
    Case("scale to zero with replicas kept", with_("spec.scaling", {"minReplicas": 2, "maxReplicas": 3, "scaleToZero": {"enabled": True}}), "spec.scaling.scaleToZero.enabled", "set minReplicas to 0", "CRD"),
    Case("disaggregation with scale to zero", spec(scaling={"minReplicas": 0, "maxReplicas": 2, "scaleToZero": {"enabled": True}}, disaggregation={"enabled": True}), "spec.scaling.scaleToZero.enabled", "disable one of them", "CRD"),
    Case("CPU with tensor parallel", spec(hardware=_CPU, engine={"tensorParallelSize": 2}), "spec.engine.tensorParallelSize", "use accelerator gpu", "CRD"),
    Case("CPU with fp8", spec(hardware=_CPU, model={"source": "/models/x", "quantization": "fp8"}), "spec.model.quantization", "needs a GPU", "CRD"),
    Case("CPU with disaggregation", spec(hardware=_CPU, disaggregation={"enabled": True}), "spec.disaggregation.enabled", "needs GPUs", "CRD"),
    Case("CPU with GPUs per replica", spec(hardware={**_CPU, "gpusPerReplica": 4}), "spec.hardware.gpusPerReplica", "a CPU run uses no GPU", "CRD"),  # ignored silently before
    Case("sequences beyond a CPU step", spec(engine={"maxNumSeqs": 4096}, hardware=_CPU), "spec.engine.maxNumSeqs", "exceed the 2,048 tokens one engine step schedules (vLLM's default max_num_batched_tokens on CPU)", "CLI"),
    Case("CPU with zones", spec(hardware={**_CPU, "zones": ["1"]}), "spec.hardware.zones", "a CPU run uses no availability zones", "CRD"),
    Case("zones on existing nodes", spec(hardware={"vmSize": "Standard_NC40ads_H100_v5", "zones": ["1", "2"], "nodePool": {"existing": _BYO}}), "spec.hardware.zones", "topology.kubernetes.io/zone", "CRD"),
    Case("CPU with a node pool", spec(hardware={**_CPU, "nodePool": {"existing": _BYO}}), "spec.hardware.nodePool", "uses no node pool", "CRD"),
    Case("managed and existing pools", with_("spec.hardware.nodePool", {"managed": {}, "existing": _BYO}), "spec.hardware.nodePool.existing", "both set", "CRD"),
    Case("min nodes over max", with_("spec.hardware.nodePool", {"managed": {"minNodes": 3, "maxNodes": 2}}), "spec.hardware.nodePool.managed.minNodes", "exceeds maxNodes", "CRD"),
    # the planner's hard constraints, when the model is known offline
    Case("TP does not divide the heads", spec(engine={"tensorParallelSize": 3}, hardware={"vmSize": ND96, "gpusPerReplica": 3}), "spec.engine.tensorParallelSize", "does not divide the 32 attention heads", "CLI"),
    Case("TP does not divide the heads (auto)", spec(engine={"tensorParallelSize": 6}, hardware={"gpusPerReplica": 6}), "spec.engine.tensorParallelSize", "does not divide", "CLI"),
    Case("replica spans part of a VM", spec(engine={"tensorParallelSize": 8, "pipelineParallelSize": 3}, hardware={"vmSize": "Standard_NC96ads_A100_v4", "gpusPerReplica": 24}), "spec.engine.tensorParallelSize", "exceeds the 4 GPU(s)", "CLI"),
    Case("context longer than the model's", with_("spec.model.maxModelLen", 1_000_000), "spec.model.maxModelLen", "exceeds what meta-llama/Llama-3.1-8B-Instruct supports (131072 tokens", "CLI"),
    # pinned node bounds against the replicas (nodes per replica from the renderer's worker shape)
    Case("MIG replicas beyond maxNodes", spec(hardware=_MIG_POOL, scaling={"minReplicas": 1, "maxReplicas": 12}), "spec.scaling.maxReplicas", "12 replicas need 6 nodes of Standard_NC40ads_H100_v5 (2 replicas per node); nodePool.managed.maxNodes is 2, which holds 4 replicas, so replicas beyond 4 would stay Pending; lower maxReplicas to 4 or raise maxNodes to 6", "CLI"),
    Case("minReplicas beyond maxNodes", spec(hardware=_MIG_POOL, scaling={"minReplicas": 5, "maxReplicas": 8}), "spec.scaling.minReplicas", "5 replicas need 3 nodes of Standard_NC40ads_H100_v5 (2 replicas per node); nodePool.managed.maxNodes is 2, which holds 4 replicas, so it could never reach its minimum; lower minReplicas and maxReplicas to 4 or raise maxNodes to 4", "CLI"),
    Case("whole-GPU replicas beyond maxNodes", with_("spec.hardware.nodePool", {"managed": {"maxNodes": 1}}), "spec.scaling.maxReplicas", "2 replicas need 2 nodes of Standard_NC40ads_H100_v5 (1 replica per node); nodePool.managed.maxNodes is 1, which holds 1 replica", "CLI"),
    Case("multi-VM replicas beyond maxNodes", spec(engine=_TWO_VMS["engine"], hardware={**_TWO_VMS["hardware"], "nodePool": {"managed": {"maxNodes": 3}}}, scaling={"minReplicas": 1, "maxReplicas": 2}), "spec.scaling.maxReplicas", "2 replicas need 4 nodes of Standard_ND96isr_H100_v5 (2 nodes per replica); nodePool.managed.maxNodes is 3, which holds 1 replica", "CLI"),
    Case("one multi-VM replica beyond maxNodes", spec(engine=_TWO_VMS["engine"], hardware={**_TWO_VMS["hardware"], "nodePool": {"managed": {"maxNodes": 1}}}, scaling={"minReplicas": 1, "maxReplicas": 1}), "spec.scaling.minReplicas", "which holds no replica, so it could never reach its minimum; raise maxNodes to 2", "CLI"),
    Case("GPU-fraction replicas beyond maxNodes", spec(hardware={"vmSize": ND96, "gpuFraction": 0.5, "nodePool": {"managed": {"maxNodes": 1}}}, scaling={"minReplicas": 1, "maxReplicas": 17}), "spec.scaling.maxReplicas", "17 replicas need 2 nodes of Standard_ND96isr_H100_v5 (16 replicas per node)", "CLI"),
    Case("fixed prefill and decode replicas beyond maxNodes", spec(hardware=_MIG_POOL, disaggregation={"enabled": True, "prefillReplicas": 3, "decodeReplicas": 2}), "spec.disaggregation", "lower prefillReplicas + decodeReplicas to 4 or raise maxNodes to 3", "CLI"),
    Case("minNodes no replica can use", spec(hardware={**_MIG_POOL, "nodePool": {"managed": {"minNodes": 2, "maxNodes": 2}}}, scaling={"minReplicas": 1, "maxReplicas": 2}), "spec.hardware.nodePool.managed.minNodes", "2 nodes of Standard_NC40ads_H100_v5 stay up, but maxReplicas 2 uses at most 1 node (2 replicas per node), so 1 GPU node would be billed with nothing to run; lower minNodes to 1 or raise maxReplicas to 4", "CLI"),
    # what vLLM 0.32 on the serving image refuses or ignores, known from the catalog and the model table
    Case("bfloat16 on a T4", spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192, "dtype": "bfloat16"}, engine={"tensorParallelSize": 4}, hardware={"vmSize": "Standard_NC64as_T4_v3", "gpusPerReplica": 4}), "spec.model.dtype", "(T4-16GB) has no bfloat16", "CLI"),
    Case("float16 on Gemma 2", spec(model={"source": "hf://google/gemma-2-9b-it", "maxModelLen": 4096, "dtype": "float16"}, hardware={"vmSize": "Standard_NC40ads_H100_v5"}), "spec.model.dtype", "vLLM refuses float16 for google/gemma-2-9b-it (model type gemma2: numerical instability), so the replica would not start: set dtype bfloat16 or auto", "CLI"),
    Case("float16 on Gemma 3 with vmSize auto", spec(model={"source": "hf://google/gemma-3-27b-it", "maxModelLen": 4096, "dtype": "float16"}), "spec.model.dtype", "vLLM refuses float16 for google/gemma-3-27b-it", "CLI"),
    Case("float16 on Gemma 2 on a T4", spec(model={"source": "hf://google/gemma-2-2b-it", "maxModelLen": 4096, "dtype": "float16"}, hardware={"vmSize": "Standard_NC4as_T4_v3"}), "spec.model.dtype", "set dtype float32 (T4-16GB has no bfloat16", "CLI"),
    Case("bfloat16 on a T4 for Gemma 2", spec(model={"source": "hf://google/gemma-2-2b-it", "maxModelLen": 4096, "dtype": "bfloat16"}, hardware={"vmSize": "Standard_NC4as_T4_v3"}), "spec.model.dtype", "set dtype float32 or auto (vLLM refuses float16 for gemma2 models", "CLI"),
    Case("mtp on a model without MTP layers", spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192}, engine={"speculativeDecoding": {"method": "mtp"}}), "spec.engine.speculativeDecoding.method", "meta-llama/Llama-3.1-8B-Instruct (model type llama) has none that vLLM can use", "CLI"),
    Case("int8 on a dense model", with_("spec.model.quantization", "int8"), "spec.model.quantization", "has no experts, so it would quantize nothing", "CLI"),
    Case("awq on an unquantized checkpoint", with_("spec.model.quantization", "awq"), "spec.model.quantization", "is an unquantized bf16 checkpoint (no AWQ quantization_config)", "CLI"),
    Case("gptq on an FP8 checkpoint", spec(model={"source": "hf://deepseek-ai/DeepSeek-V3", "quantization": "gptq"}, hardware={"vmSize": "Standard_ND96isr_H200_v5"}), "spec.model.quantization", "is an fp8 checkpoint", "CLI"),
    Case("bitsandbytes", with_("spec.model.quantization", "bitsandbytes"), "spec.model.quantization", "vllm-bnb-plugin", "CLI"),
    Case("arm64 VM size", with_("spec.hardware.vmSize", "Standard_ND128isr_NDR_GB200_v6"), "spec.hardware.vmSize", "has an arm64 host CPU", "CLI"),
    Case("pipeline stages that split VMs", spec(engine={"tensorParallelSize": 4, "pipelineParallelSize": 3}, hardware={"vmSize": ND96, "gpusPerReplica": 12}), "spec.hardware.gpusPerReplica", "not a multiple of 8", "CLI"),
]  # fmt: skip

# Valid documents beyond deploy/examples: edge values every layer must accept.
GOOD = {
    "base": BASE,
    "47-character name": with_("metadata.name", "a" * 47),
    "generate name": {**BASE, "metadata": {"generateName": "llama-"}},
    "explicit nulls": with_("spec.hardware", {"vmSize": "Standard_NC40ads_H100_v5", "migProfile": None}),
    "spot at on-demand price": with_("spec.hardware.spot", {"enabled": True, "maxPrice": -1}),
    "spot price as an integer": with_("spec.hardware.spot", {"enabled": True, "maxPrice": 3}),
    "taint without a value": spec(hardware={"vmSize": "Standard_NC40ads_H100_v5", "nodePool": {"existing": {**_BYO, "tolerationsForTaints": ["kubernetes.azure.com/scalesetpriority=spot:NoSchedule", "gpu:NoExecute"]}}}),
    "scale to zero": with_("spec.scaling", {"minReplicas": 0, "maxReplicas": 2, "scaleToZero": {"enabled": True}}),
    "queue depth equal to the batch": spec(engine={"maxNumSeqs": 8}, scaling={"targetQueueDepth": 8}),
    "pass-through engine arguments": with_("spec.engine.extraArgs", {"block_size": 32, "kv_cache_dtype": "fp8"}),
    "tensor and pipeline parallel": spec(engine={"tensorParallelSize": 8, "pipelineParallelSize": 2}, hardware={"vmSize": ND96, "gpusPerReplica": 16}),
    "MIG slice": with_("spec.hardware", {"vmSize": ND96, "migProfile": "MIG3g"}),  # 1g's 10 GB: no 8B model fits
    "MIG replicas filling maxNodes exactly": spec(hardware=_MIG_POOL, scaling={"minReplicas": 4, "maxReplicas": 4}),
    "multi-VM replicas filling pinned node bounds exactly": spec(engine=_TWO_VMS["engine"], hardware={**_TWO_VMS["hardware"], "nodePool": {"managed": {"minNodes": 4, "maxNodes": 4}}}, scaling={"minReplicas": 1, "maxReplicas": 2}),
    "maxNodes above what maxReplicas needs": spec(hardware={**_MIG_POOL, "nodePool": {"managed": {"maxNodes": 5}}}, scaling={"minReplicas": 1, "maxReplicas": 4}),
    "Azure Blob sources with a SAS and a workload identity": spec(model={"source": "abfss://models@acct.dfs.core.windows.net/llama", "accessSecretRef": {"name": "sas", "key": "sas"}}, lora={"adapters": [{"name": "a", "source": "https://acct.blob.core.chinacloudapi.cn/loras/a"}]}, hardware={"vmSize": "Standard_NC40ads_H100_v5"}, serviceAccountName="models-reader"),
    "float16 on T4s": spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192, "dtype": "float16"}, engine={"tensorParallelSize": 4}, hardware={"vmSize": "Standard_NC64as_T4_v3", "gpusPerReplica": 4}),
    "dtype auto on T4s": spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192}, engine={"tensorParallelSize": 4}, hardware={"vmSize": "Standard_NC64as_T4_v3", "gpusPerReplica": 4}),
    "Gemma 2 in bfloat16": spec(model={"source": "hf://google/gemma-2-9b-it", "maxModelLen": 4096, "dtype": "bfloat16"}, hardware={"vmSize": "Standard_NC40ads_H100_v5"}),
    "sequences within an H100's step": spec(engine={"maxNumSeqs": 4096}, hardware={"vmSize": "Standard_NC40ads_H100_v5"}),
    "sequences within a raised step": spec(engine={"maxNumSeqs": 4096, "extraArgs": {"max_num_batched_tokens": 4096}}, hardware={"vmSize": "Standard_NC24ads_A100_v4"}),
    "LoRA slots within the GPU": spec(model={"source": "hf://meta-llama/Llama-3.1-8B-Instruct", "maxModelLen": 8192}, lora={"maxAdaptersPerReplica": 64, "maxRank": 64, "adapters": [{"name": "a", "source": "pvc://adapters/a"}]}, hardware={"vmSize": "Standard_NC24ads_A100_v4"}),
    "bfloat16 on vmSize auto": with_("spec.hardware.vmSize", "auto", with_("spec.model.dtype", "bfloat16")),
    "int8 on a MoE model": spec(model={"source": "hf://Qwen/Qwen3-30B-A3B", "maxModelLen": 8192, "quantization": "int8"}, hardware={"vmSize": "Standard_NC40ads_H100_v5"}),
    "CPU run": {**BASE, "spec": {"model": {"source": "./models/tiny", "maxModelLen": 1024}, "hardware": _CPU, "endpoint": {"auth": {"mode": "none"}}}},
    "labels and annotations": with_("metadata", {"name": "m", "namespace": "ai", "labels": {"team": "ml", "app.kubernetes.io/part-of": "chat"}, "annotations": {"note": "free text: anything"}}),
}  # fmt: skip
