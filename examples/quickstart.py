import onnx
import torch

import ep_compile as ep

torch.manual_seed(0)
train, test = ep.load_source("digits")  # scikit-learn's real digits: raw uint8 (N, 1, 8, 8) and labels
mean = train.x.float().div(255).mean(dim=(0, 2, 3)).tolist()  # per channel, from the training set
std = train.x.float().div(255).std(dim=(0, 2, 3)).tolist()
x_train, x_test = (ep.normalize(d.x, mean, std, std_scale=3.0) for d in (train, test))  # (N, 1, 8, 8) floats

model = ep.EPNet(ep.model_config("digits-small"))  # conv 16-32 + max-pool, softmax read-out
phases = ep.Phases(T=30, K=10, beta=0.5)  # free steps, nudged steps, nudging strength
x, y = x_train[:64], train.y[:64]

# every estimator behind one signature, each an estimate of dL/dtheta; compare one with BPTT
ep_est = ep.get_estimator("symmetric")(model, x, y, phases)
bptt = ep.get_estimator("bptt")(model, x, y, phases)
for name, idx in ep.layer_groups(model):  # 'conv1', 'conv2', 'readout' and their parameter indices
    g_ep, g_bp = ep_est.grads[idx[0]].flatten(), bptt.grads[idx[0]].flatten()  # the layer's weight
    print(f"{name:8s} cos(EP, BPTT) = {torch.nn.functional.cosine_similarity(g_ep, g_bp, dim=0):.4f}")
print("estimators:", ", ".join(n for n, e in ep.ENTRIES.items() if not (e.needs_asymmetric or e.spiking)))

# three epochs of symmetric EP: the estimate goes into .grad, any torch optimizer takes the step
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
symmetric = ep.get_estimator("symmetric")
for epoch in range(3):
    order = torch.randperm(len(train.y))
    for i in range(0, len(order) - 63, 64):
        idx = order[i : i + 64]
        ep.set_grads(model, symmetric(model, x_train[idx], train.y[idx], phases).grads)
        optimizer.step()
    with torch.no_grad():  # inference: the free phase settles, the read-out gives the class scores
        s = ep.relax(model, x_test, model.init_states(len(x_test), x_test), phases.T)
        acc = (model.logits(s).argmax(1) == test.y).float().mean().item()
    print(f"epoch {epoch + 1}: test accuracy {acc:.4f}")

onnx.save(ep.build_onnx(model), "quickstart.onnx")  # the free phase as an ONNX Loop (docs/onnx.md)
print("wrote quickstart.onnx")
