-- Argo CD health of a tokenplane InferenceDeployment (tokenplane.io/v1alpha1), from the status the operator writes.
-- Healthy: Ready=True for the current generation. Degraded: Stalled=True (a human must act: GPU quota, SKU not in
-- the region, an invalid spec). Progressing: anything else (the operator has not seen the latest spec yet, a node
-- pool is provisioning, the model is loading). Same reading as kstatus (Flux): observedGeneration first.
-- Tested with a real Lua runtime on bodies a running operator wrote: tests/operator/test_gitops_health.py.
local hs = { status = "Progressing", message = "Waiting for the tokenplane operator" }
if obj.status == nil then
  return hs
end
local function condition(kind)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "NotReady") .. ": " .. (ready.message or "")
end
return hs
