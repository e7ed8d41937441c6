-- Argo CD health of peft.dev/v1alpha1 AdapterDeployment
-- (resource.customizations.health.peft.dev_AdapterDeployment).
-- Ready=True: Healthy (every adapter loaded and answering on every replica). Degraded=True: Degraded.
-- Anything else, no status yet, or a status older than the spec (observedGeneration): Progressing.
-- Argo CD opens only Lua's base, table, package and a safe os for this script (string and math only when an
-- admin sets resource.customizations.useOpenLibs.peft.dev_AdapterDeployment): arithmetic and tables.
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }
if obj.status == nil then
  return hs
end
local status = obj.status

local function condition(type)
  if status.conditions ~= nil then
    for _, c in ipairs(status.conditions) do
      if c.type == type then
        return c
      end
    end
  end
  return nil
end

local ready = condition("Ready")
local degraded = condition("Degraded")
local progressing = condition("Progressing")

local generation = obj.metadata ~= nil and obj.metadata.generation or nil
local observed = status.observedGeneration
if observed == nil and ready ~= nil then
  observed = ready.observedGeneration
end
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. (generation - generation % 1)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "All adapters loaded"
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
elseif progressing ~= nil and progressing.message ~= nil and progressing.message ~= "" then
  hs.message = progressing.message
end
return hs
