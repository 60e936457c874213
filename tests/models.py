"""Small models for the tests: each exercises a family of ops."""
import torch
from torch import nn


class ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        with torch.no_grad():  # non-trivial batch-norm statistics
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    """ResNet-18's structure at small width: stem conv 7x7/2, max-pool, basic blocks, avg-pool, fc."""

    def __init__(self, width=16, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.pool(self.stem(x))))
        return self.fc(torch.flatten(self.avg(x), 1))


class OpZoo(nn.Module):
    """Ops MobileNetV2/ResNet/BERT use that the other models miss: hardswish, gelu, cat, avg_pool2d,
    mul, matmul/bmm, softmax, layer_norm (float island), permute/transpose/reshape, embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 12)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 5, padding=2, groups=6)
        self.norm = nn.LayerNorm(12)
        self.q = nn.Linear(12, 12)
        self.k = nn.Linear(12, 12)
        self.proj = nn.Linear(12, 12)

    def forward(self, img, ids):
        a = nn.functional.hardswish(self.conv(img))
        b = nn.functional.relu6(self.dw(a))
        c = torch.cat([a, b], dim=1)
        c = nn.functional.avg_pool2d(c, 2)
        c = c * torch.sigmoid(c)
        pooled = self.proj(c.mean((2, 3)))  # [B, 12]
        t = self.norm(self.emb(ids) + pooled.unsqueeze(1))  # [B, T, 12]
        q = nn.functional.gelu(self.q(t))
        k = self.k(t).transpose(1, 2)
        att = torch.softmax(torch.bmm(q, k), dim=-1)
        out = torch.matmul(att, t).permute(0, 2, 1).reshape(t.shape[0], -1)
        return out


class DepthwiseBlocks(nn.Module):
    """Depthwise convs of every shape the depthwise kernels meet: stride 1 and 2, with and without padding,
    3x3 and 5x5 windows, a dilation, channels not a multiple of 4 (10) or 16 (20), a ReLU6 that stays float (the conv's
    int32 accumulator is the output), a requantized ReLU and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 3, padding=1)
        self.dw1 = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.dw2 = nn.Conv2d(10, 10, 3, stride=2, padding=1, groups=10)
        self.pw = nn.Conv2d(10, 20, 1)
        self.dw3 = nn.Conv2d(20, 20, 5, padding=2, groups=20)
        self.dw4 = nn.Conv2d(20, 20, 3, stride=2, dilation=2, groups=20)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = nn.functional.relu6(self.dw1(x))
        x = torch.relu(self.dw2(x))
        x = self.pw(x)
        x = self.dw4(x + self.dw3(x))
        return self.fc(x.mean((2, 3)))


class Attention(nn.Module):
    """Multi-head self-attention with explicit matmuls (as BERT's eager attention): Q.K^T and P.V are
    quantized as matmul_int."""

    def __init__(self, d=32, heads=2):
        super().__init__()
        self.h = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.h, d // self.h).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        p = (torch.matmul(q, k.transpose(-1, -2)) * (d // self.h) ** -0.5).softmax(-1)
        return self.o(torch.matmul(p, v).transpose(1, 2).reshape(b, s, d))
