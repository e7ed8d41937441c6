-- Argo CD health of peft.dev/v1alpha1 AdapterAttachment
-- (resource.customizations.health.peft.dev_AdapterAttachment).
-- Ready=True: Healthy (loaded on every replica of the shared AdapterDeployment). Accepted=False (not allowed,
-- over quota, name taken, no such deployment), ResolvedRefs=False for any reason but RefNotReady (a job still
-- training), or Ready=False with LoadFailed: Degraded. Anything else, no status yet, or a status older than the
-- spec (observedGeneration): Progressing. Only Lua's base, table, package and a safe os are open here.
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

local generation = obj.metadata ~= nil and obj.metadata.generation or nil
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe generation " .. (generation - generation % 1)
  return hs
end

local accepted = condition("Accepted")
local resolved = condition("ResolvedRefs")
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Serving " .. (status.servedName or "the adapter") .. ": " .. (ready.message or "")
  return hs
end
local blocking = nil
if accepted ~= nil and accepted.status == "False" then
  blocking = accepted
elseif resolved ~= nil and resolved.status == "False" and resolved.reason ~= "RefNotReady" then
  blocking = resolved
elseif ready ~= nil and ready.reason == "LoadFailed" then
  blocking = ready
end
if blocking ~= nil then
  hs.status = "Degraded"
  hs.message = (blocking.reason or "") .. ": " .. (blocking.message or "")
  return hs
end
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
end
return hs
