package engine

import "context"

// AgentKey returns the pinned host key of instance id's guest agent
// (authorized_keys format; "" before its first contact), so that a client
// reaching the agent over another carrier (nodeagent.Remote) can check it.
// errs.NotFound for a missing instance.
func (l *Local) AgentKey(ctx context.Context, id string) (string, error) {
	v, err := l.load(ctx, id)
	if err != nil {
		return "", err
	}
	return v.AgentKey, nil
}
