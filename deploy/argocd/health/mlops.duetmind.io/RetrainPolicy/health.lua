-- Argo CD health check for mlops.duetmind.io/RetrainPolicy.
-- Healthy: Idle (watching its triggers). Progressing: no status yet, status older than the spec,
-- or a retraining Job running. Suspended: a trigger waits for a human's approval. Degraded: the
-- policy or its last run failed.
local hs = {}

local status = obj.status
if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status is for generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local phase = status.phase
if phase == "Failed" or status.lastRunResult == "Failed" then
  hs.status = "Degraded"
  hs.message = "Last retraining failed"
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == "Ready" and c.status == "False" and c.message ~= nil then
        hs.message = c.message
      end
    end
  end
  return hs
end
if phase == "AwaitingApproval" then
  hs.status = "Suspended"
  local pending = status.pendingApproval
  if pending ~= nil then
    hs.message = "Waiting for approval of " .. tostring(pending.id) .. " (" .. tostring(pending.triggerType)
      .. "): annotate mlops.duetmind.io/approve=" .. tostring(pending.id)
  else
    hs.message = "Waiting for approval"
  end
  return hs
end
if phase == "Running" or status.lastRunResult == "Running" then
  hs.status = "Progressing"
  hs.message = "Retraining Job " .. tostring(status.activeJob) .. " running"
  return hs
end
if phase == "Idle" then
  hs.status = "Healthy"
  if status.lastRunResult ~= nil then
    hs.message = "Idle; last run " .. tostring(status.lastRunResult)
  else
    hs.message = "Idle; no retraining run yet"
  end
  return hs
end
hs.status = "Progressing"
hs.message = "Phase " .. tostring(phase)
return hs
