"""Write the bundled demo preference set (English and Chinese): helpful answers preferred over unhelpful ones.

Run from the repository root: ``python scripts/make_demo_data.py``. The output is deterministic and committed under
``src/dpo_cli/assets/demo/`` (train.jsonl, eval.jsonl), so the quickstart needs no network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "dpo_cli" / "assets" / "demo"
EVAL_SIZE = 80

CAPITALS = [
    ("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"), ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"), ("Germany", "Berlin", "德国", "柏林"), ("Egypt", "Cairo", "埃及", "开罗"),
    ("Canada", "Ottawa", "加拿大", "渥太华"), ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Peru", "Lima", "秘鲁", "利马"), ("Norway", "Oslo", "挪威", "奥斯陆"), ("Greece", "Athens", "希腊", "雅典"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"), ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"), ("Austria", "Vienna", "奥地利", "维也纳"),
    ("Ireland", "Dublin", "爱尔兰", "都柏林"), ("Poland", "Warsaw", "波兰", "华沙"),
    ("Vietnam", "Hanoi", "越南", "河内"), ("Chile", "Santiago", "智利", "圣地亚哥"),
    ("Cuba", "Havana", "古巴", "哈瓦那"), ("Sweden", "Stockholm", "瑞典", "斯德哥尔摩"),
    ("Finland", "Helsinki", "芬兰", "赫尔辛基"), ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("India", "New Delhi", "印度", "新德里"), ("Brazil", "Brasilia", "巴西", "巴西利亚"),
]
WORDS = [
    ("apple", "pomme", "苹果"), ("water", "eau", "水"), ("book", "livre", "书"), ("cat", "chat", "猫"),
    ("house", "maison", "房子"), ("sun", "soleil", "太阳"), ("friend", "ami", "朋友"), ("bread", "pain", "面包"),
    ("tree", "arbre", "树"), ("school", "école", "学校"), ("flower", "fleur", "花"), ("moon", "lune", "月亮"),
    ("dog", "chien", "狗"), ("milk", "lait", "牛奶"), ("rain", "pluie", "雨"), ("car", "voiture", "汽车"),
]
TIPS = [
    ("sleeping better", "Keep a regular bedtime and put your phone away an hour before sleep.",
     "睡眠", "每天固定时间睡觉，睡前一小时不要看手机。"),
    ("learning a language", "Practise a little every day and speak out loud, even when you make mistakes.",
     "学习外语", "每天坚持练习一点，大胆开口说，不怕犯错。"),
    ("saving money", "Write down what you spend for a month, then cut the costs you did not enjoy.",
     "省钱", "记录一个月的开销，然后减少那些不必要的支出。"),
    ("running", "Start slowly, increase your distance by about ten percent a week, and rest between runs.",
     "跑步", "从慢跑开始，每周增加约百分之十的距离，并注意休息。"),
    ("cooking rice", "Rinse the rice first and use about one and a half cups of water for each cup of rice.",
     "煮米饭", "先把米洗净，一杯米大约加一杯半的水。"),
    ("studying", "Study in short focused blocks of twenty five minutes with a short break after each.",
     "复习", "每次专心学习二十五分钟，然后休息五分钟。"),
    ("writing an email", "Put the main request in the first sentence and keep the message short.",
     "写邮件", "第一句话就写清楚你的请求，内容尽量简短。"),
    ("staying healthy", "Drink enough water, walk every day, and eat vegetables with each meal.",
     "保持健康", "多喝水，每天散步，每顿饭都吃些蔬菜。"),
    ("reading more", "Carry a book with you and read a few pages whenever you wait.",
     "多读书", "随身带一本书，等待的时候读几页。"),
    ("growing plants", "Check the soil with your finger and water only when the top feels dry.",
     "养花", "用手指试一下土壤，表面干了再浇水。"),
]
NAMES = ["Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Lily", "Tom"]
NAMES_ZH = ["小明", "小红", "李老师", "王阿姨", "张先生", "小华", "陈同学", "刘医生"]

UNHELPFUL_EN = [
    "I don't know.", "No idea, look it up yourself.", "I can't help with that.", "Why would you even ask that?",
    "That is a silly question.", "Whatever.", "Ask someone else.", "I am not going to answer that.",
    "I like turtles.", "Let's talk about the weather instead, it is much more interesting than your question.",
    "Well, there are so many opinions about this and so many things to consider that honestly it is impossible "
    "to say anything useful, so I will not try.",
    "Hmm, maybe, maybe not. Who knows? It could be anything really.",
]
UNHELPFUL_ZH = [
    "不知道。", "自己去查吧。", "这个我帮不了你。", "你为什么要问这种问题？", "这个问题太无聊了。", "随便吧。",
    "去问别人吧。", "我不想回答。", "我喜欢吃西瓜。", "我们还是聊聊天气吧，比你的问题有意思多了。",
    "这个问题嘛，说法太多了，要考虑的东西也太多了，说实话很难讲清楚，所以我就不说了。",
    "也许是，也许不是，谁知道呢？什么都有可能。",
]


def english() -> list[tuple[str, str]]:
    pairs = [(f"What is the capital of {c}?", f"The capital of {c} is {cap}.") for c, cap, _, _ in CAPITALS]
    pairs += [(f"How do you say '{w}' in French?", f"In French, '{w}' is '{fr}'.") for w, fr, _ in WORDS]
    pairs += [(f"Can you give me one tip for {topic}?", f"Sure! {tip}") for topic, tip, _, _ in TIPS]
    pairs += [(f"Write a short greeting for {n}.", f"Hello {n}, I hope you are having a wonderful day!")
              for n in NAMES]
    rng = random.Random(1)
    for _ in range(60):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        pairs.append((f"What is {a} plus {b}?", f"{a} plus {b} equals {a + b}."))
    return pairs


def chinese() -> list[tuple[str, str]]:
    pairs = [(f"{c}的首都是哪里？", f"{c}的首都是{cap}。") for _, _, c, cap in CAPITALS]
    pairs += [(f"“{zh}”用英语怎么说？", f"“{zh}”的英文是“{w}”。") for w, _, zh in WORDS]
    pairs += [(f"请给我一个关于{topic}的建议。", f"好的！{tip}") for _, _, topic, tip in TIPS]
    pairs += [(f"请写一句给{n}的问候语。", f"{n}，你好！祝你今天过得愉快！") for n in NAMES_ZH]
    rng = random.Random(2)
    for _ in range(60):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        pairs.append((f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"))
    return pairs


def rows() -> list[dict]:
    rng = random.Random(0)
    out = []
    for language, pairs, unhelpful in (("en", english(), UNHELPFUL_EN), ("zh", chinese(), UNHELPFUL_ZH)):
        for prompt, answer in pairs:
            # two rejected answers per prompt, so each prompt is seen against different kinds of unhelpfulness
            for bad in rng.sample(unhelpful, 2):
                out.append({
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": bad}],
                    "language": language,
                })
    rng.shuffle(out)
    return out


def main() -> None:
    data = rows()
    OUT.mkdir(parents=True, exist_ok=True)
    # hold out whole prompts, so no eval question was seen in training
    prompts = sorted({r["prompt"][0]["content"] for r in data})
    random.Random(3).shuffle(prompts)
    held_out, count = set(), 0
    for p in prompts:
        if count >= EVAL_SIZE:
            break
        held_out.add(p)
        count += sum(r["prompt"][0]["content"] == p for r in data)
    splits = {"train": [r for r in data if r["prompt"][0]["content"] not in held_out],
              "eval": [r for r in data if r["prompt"][0]["content"] in held_out]}
    for name, part in splits.items():
        with open(OUT / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}: {len(part)} pairs -> {OUT / f'{name}.jsonl'}")


if __name__ == "__main__":
    main()
