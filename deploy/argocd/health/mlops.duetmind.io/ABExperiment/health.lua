-- Argo CD health check for mlops.duetmind.io/ABExperiment.
-- Healthy: Running or Completed, with no guardrail breach and no sample ratio mismatch.
-- Progressing: no status yet, status older than the spec, or Draft. Suspended: paused
-- (spec.paused or phase Paused). Degraded: a guardrail breached, a sample ratio mismatch (the
-- verdict is blocked), or Terminated early.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

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
local breached = condition(status, "GuardrailBreached")
if breached ~= nil and breached.status == "True" then
  hs.status = "Degraded"
  hs.message = "Guardrail breached: " .. tostring(breached.message)
  return hs
end
if status.sampleRatioMismatch == true then
  hs.status = "Degraded"
  hs.message = "Sample ratio mismatch: the arms' sizes differ from the split more than chance allows"
  return hs
end
if phase == "Terminated" then
  hs.status = "Degraded"
  hs.message = "Terminated: " .. tostring(status.recommendation)
  return hs
end
if phase == "Paused" or (obj.spec ~= nil and obj.spec.paused == true) then
  hs.status = "Suspended"
  hs.message = "Experiment paused: control serves every request"
  return hs
end
if phase == "Completed" then
  hs.status = "Healthy"
  hs.message = "Completed, winner " .. tostring(status.winner) .. ": " .. tostring(status.recommendation)
  return hs
end
if phase == "Running" then
  hs.status = "Healthy"
  local split = status.currentSplit
  if split ~= nil then
    hs.message = "Running, treatment share " .. tostring(split)
  else
    hs.message = "Running"
  end
  return hs
end
hs.status = "Progressing"
hs.message = "Phase " .. tostring(phase)
return hs
