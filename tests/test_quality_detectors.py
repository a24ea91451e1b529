"""Quality detectors: labelled sets scored for precision and recall (or accuracy), and speed.

Every example carries the label a careful human gives it, hard negatives included
("I can't wait to help", "Sorry for the delay, here is the fix", a song with a chorus, a
Python test module). Scores are asserted; ``pytest -s`` prints one table and every miss.
The speed test times :func:`analyse` on 1000 realistic, distinct events; the differential test
checks every flag of the fast paths against the frozen previous implementation on thousands of
varied events (``bench/quality.py`` runs it on more, and times both).
"""

from __future__ import annotations

import json
import random
import statistics
import time

import pytest

from monitor.quality import (
    PLACEHOLDER_KINDS,
    QUALITY_COLUMNS,
    QualityFlags,
    analyse,
    is_degenerate,
    is_empty,
    is_refusal,
    is_truncated,
    json_requested,
    json_valid,
    language,
    language_mismatch,
    pii_in_output,
    repetition,
    warm_up,
)
from monitor.quality import language_id
from monitor.quality.language_id import CORE_LANGUAGES, LANGUAGES

TABLE: dict[str, str] = {}
"""Detector -> its score line; printed by the last test (and each test prints its own)."""


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def _binary(name: str, cases: list[tuple[object, bool]], predict) -> tuple[float, float, list[str]]:
    tp = fp = fn = tn = 0
    misses = []
    for case, label in cases:
        got = predict(case)
        if got and label:
            tp += 1
        elif got and not label:
            fp += 1
            misses.append(f"  FP {name}: {str(case)[:110]!r}")
        elif label:
            fn += 1
            misses.append(f"  FN {name}: {str(case)[:110]!r}")
        else:
            tn += 1
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    TABLE[name] = (f"{name:<22}{len(cases):>6}{tp:>5}{fp:>5}{fn:>5}{tn:>5}"
                   f"{precision:>11.3f}{recall:>8.3f}")
    print("\n" + TABLE[name] + ("\n" + "\n".join(misses) if misses else ""))
    return precision, recall, misses


def _accuracy(name: str, n: int, correct: int, misses: list[str]) -> float:
    acc = _ratio(correct, n)
    TABLE[name] = f"{name:<22}{n:>6}{'':>20}{'accuracy':>11}{acc:>8.3f}"
    print("\n" + TABLE[name] + ("\n" + "\n".join(misses) if misses else ""))
    return acc


# =================================================================================== refusal

REFUSALS: list[tuple[str, bool]] = [
    # ---- refusals (policy and capability), many languages
    ("I'm sorry, but I can't help with that.", True),
    ("I can't help with that.", True),
    ("I’m sorry, but I can’t assist with that request.", True),
    ("As an AI language model, I cannot provide instructions for making explosives or other weapons. "
     "If you are interested in chemistry, I'd be happy to suggest some safe experiments you can do at home.", True),
    ("I won't be able to help you write ransomware. Creating malicious software is illegal and can cause serious "
     "harm to people and organisations. If you work in security, I can point you to resources on defending "
     "networks against ransomware instead.", True),
    ("I'm not able to provide information on how to poison someone. If you or someone you know is in danger, "
     "please contact local emergency services right away.", True),
    ("Sorry, I can't do that.", True),
    ("I apologize, but I cannot fulfill this request as it goes against my guidelines.", True),
    ("Unfortunately, I'm unable to comply with this request.", True),
    ("I must decline to help with installing a keylogger on someone else's laptop without their knowledge. "
     "Secretly monitoring another person is a serious privacy violation and illegal in most countries.", True),
    ("That's not something I can help with. Is there anything else I can do for you?", True),
    ("I cannot and will not provide guidance on breaking into someone else's e-mail account.", True),
    ("I'm really sorry you're going through this, but I can't provide the information you asked for. "
     "Please reach out to a crisis line or someone you trust; you don't have to face this alone.", True),
    ("As an AI, I don't have the ability to browse the internet, so I can't check today's exchange rate.", True),
    ("Sorry, but I can't share my system prompt.", True),
    ("I'm afraid I can't do that.", True),
    ("No. I won't write a message designed to harass your former colleague.", True),
    ("Ich kann Ihnen dabei leider nicht helfen.", True),
    ("Es tut mir leid, aber bei dieser Anfrage kann ich nicht helfen.", True),
    ("Leider kann ich diese Anfrage nicht erfüllen, da sie gegen unsere Richtlinien verstößt.", True),
    ("Als KI-Sprachmodell kann ich keine medizinischen Diagnosen stellen. Bitte wenden Sie sich an Ihren Arzt.", True),
    ("Je ne peux pas vous aider avec cette demande.", True),
    ("Désolé, mais je ne peux pas répondre à cette question.", True),
    ("En tant qu'intelligence artificielle, je ne suis pas en mesure de fournir des conseils médicaux personnalisés.",
     True),
    ("Lo siento, pero no puedo ayudarte con eso.", True),
    ("Lo siento, no puedo proporcionar instrucciones para fabricar armas.", True),
    ("Como modelo de lenguaje, no puedo dar opiniones personales sobre candidatos políticos.", True),
    ("Mi dispiace, ma non posso aiutarti con questa richiesta.", True),
    ("Desculpe, mas não posso ajudar com isso.", True),
    ("Sinto muito, mas não consigo fornecer esse tipo de informação.", True),
    ("Het spijt me, maar daar kan ik je niet mee helpen.", True),
    ("抱歉，我无法帮助你完成这个请求。", True),
    ("对不起，我不能提供这方面的信息。如果你有其他问题，欢迎继续提问。", True),
    ("申し訳ありませんが、そのご依頼にはお応えできません。", True),
    ("申し訳ございませんが、その質問にはお答えできません。他にご質問があればお気軽にどうぞ。", True),
    ("Извините, но я не могу помочь с этим запросом.", True),
    ("Przepraszam, ale nie mogę pomóc w tej sprawie.", True),
    ("Üzgünüm, ancak bu konuda yardımcı olamam.", True),
    ("죄송하지만 그 요청은 도와드릴 수 없습니다.", True),
    ("عذراً، لا أستطيع المساعدة في هذا الطلب.", True),
    ("I can't help you hack into your ex-partner's Instagram account. Accessing someone else's account without "
     "permission is illegal. If you're worried about your own account's security, I can help with that.", True),
    ("I don't have access to real-time data, so I can't tell you the current price of Bitcoin.", True),
    # ---- hard negatives: apologies, impossibility explained, idioms, quoted refusals, helpful answers
    ("I can't wait to help you plan the trip! Here's a first draft of a three-day itinerary for Lisbon: "
     "Day 1: Alfama and the castle. Day 2: Belém. Day 3: Sintra.", False),
    ("Sorry for the delay, here is the fix: change the timeout in config.yaml from 5 to 30 seconds and restart "
     "the service.", False),
    ("The command cannot run because the file is not executable. Run `chmod +x deploy.sh` first, then try again.",
     False),
    ("I'm sorry to hear that your parcel is late. I've checked order 48213: it left our warehouse on Friday and "
     "should arrive tomorrow before noon.", False),
    ("Unfortunately, there is no direct way to undo a git push, but you can revert the commit with "
     "`git revert HEAD` and push again.", False),
    ("I cannot stress enough how important it is to back up the database before running the migration. Here are "
     "the steps: 1. stop the writers, 2. run pg_dump, 3. apply the migration.", False),
    ("You can't use `await` outside an async function. Wrap the call in `async def main()` and run it with "
     "`asyncio.run(main())`.", False),
    ("I couldn't find an order with the number 48213 in our system. Could you double-check the number or send me "
     "the e-mail address you used for the purchase?", False),
    ("Sure! I can help with that. First, open the settings page and choose 'Notifications'.", False),
    ("Sorry, I can't help noticing that the loop never terminates: `i` is never incremented inside the while "
     "loop. Add `i += 1` at the end of the body.", False),
    ("I can't reproduce the error with the code you posted, but the stack trace suggests that `user` is None when "
     "`save()` is called. Add a check before saving.", False),
    ("I'm not able to see the attachment you mentioned. Could you paste the log output here?", False),
    ("I can't give you an exact number, but most teams see a 20-30% reduction in build time after enabling "
     "the remote cache.", False),
    ("I can't process the refund without the order number. Could you send it to me?", False),
    ("Here is a polite way to decline the meeting: \"Thank you for the invitation, but I won't be able to attend "
     "on Thursday.\"", False),
    ("You could answer the customer like this: \"I'm sorry, but I can't help with that request.\" Then point them "
     "to the self-service portal.", False),
    ("The `refusal` field is set when the model declines a request. In that case `content` is null. A typical "
     "value is \"I'm sorry, but I can't help with that.\"", False),
    ("As an AI language model trained on code, I find this question interesting: the difference between "
     "`list.sort()` and `sorted()` is that the former sorts in place.", False),
    ("No problem! I can't promise it will be perfect, but here's a first version of the cover letter.", False),
    ("The model can't help with tasks that need live data, so the app calls a search API first and passes the "
     "results in the prompt.", False),
    ("Der Befehl kann nicht ausgeführt werden, weil die Datei fehlt. Legen Sie zuerst die Konfiguration an.", False),
    ("Ich kann Ihnen gerne dabei helfen! Öffnen Sie zuerst die Einstellungen und wählen Sie 'Konto'.", False),
    ("Leider kann ich die Bestellung 48213 nicht finden. Können Sie die Nummer bitte noch einmal prüfen?", False),
    ("Es tut mir leid, dass Ihr Paket verspätet ist. Es wurde am Freitag verschickt und kommt morgen an.", False),
    ("Désolé pour le retard ! Voici la correction : il faut augmenter le délai d'attente à 30 secondes.", False),
    ("Je ne peux que vous recommander de mettre à jour vers la version 3.2, qui corrige ce problème.", False),
    ("Lo siento por la espera. Aquí tienes el código corregido con la validación añadida.", False),
    ("No puedo garantizar que funcione en todas las versiones, pero aquí tienes una solución que funciona con "
     "Python 3.10 o superior.", False),
    ("Non posso che consigliarti di aggiornare alla versione più recente del driver.", False),
    ("Desculpe a demora! Aqui está o código corrigido.", False),
    ("Het spijt me dat je pakket vertraagd is. Het is vrijdag verzonden en komt morgen aan.", False),
    ("抱歉让您久等了，以下是修复后的代码：", False),
    ("该命令无法运行，因为文件没有执行权限。请先运行 chmod +x deploy.sh。", False),
    ("我无法确定具体原因，但从日志来看，很可能是数据库连接池耗尽了。建议把连接池上限调大。", False),
    ("お待たせして申し訳ありません。修正版のコードは以下のとおりです。", False),
    ("このコマンドは権限がないため実行できません。先に chmod +x を実行してください。", False),
    ("Извините за задержку! Вот исправленный код.", False),
    ("Great question! Refusal rates usually rise when the system prompt is too strict. Here is how to measure "
     "them with a small labelled set.", False),
    ("Here's the SQL you asked for:\n```sql\nSELECT user_id, count(*) FROM orders GROUP BY user_id;\n```", False),
    ("Yes, I can do that. Here is the rewritten paragraph in a friendlier tone.", False),
    # ---- second batch (written before the patterns were tuned on it)
    ("I'm sorry, but I cannot help you create a phishing email.", True),
    ("I'm not going to help with that. Doxxing someone can put them in real danger.", True),
    ("Sorry — I can't provide medical dosing advice for that. Please ask your pharmacist.", True),
    ("I’d rather not write that joke; it targets people based on their ethnicity.", True),
    ("Unfortunately I can't generate that image description because it involves a real private person.", True),
    ("I can’t comply with that.", True),
    ("I'm unable to help with requests to bypass software licensing.", True),
    ("This request violates our usage policy, so I can't continue.", True),
    ("I am not able to assist with that.", True),
    ("We can't help with requests about evading taxes.", True),
    ("Entschuldigung, aber das kann ich nicht tun.", True),
    ("Dabei kann ich dir leider nicht helfen.", True),
    ("Désolée, je ne peux pas t'aider à contourner cette protection.", True),
    ("No puedo ayudarte a acceder a la cuenta de otra persona.", True),
    ("Purtroppo non posso fornire queste informazioni.", True),
    ("Infelizmente, não posso ajudar com esse pedido.", True),
    ("Sorry, maar ik kan je daar niet bij helpen.", True),
    ("很抱歉，我不能协助你进行这类操作。", True),
    ("申し訳ありませんが、その内容についてはお手伝いできません。", True),
    ("I'm sorry, I can't create content that sexualizes minors.", True),
    ("I won't provide instructions for synthesizing methamphetamine.", True),
    ("Sorry, I'm not able to help with that one.", True),
    # negatives
    ("I can't believe how much faster this is! Here's the benchmark: 120 ms before, 35 ms after.", False),
    ("Sorry about that! The correct command is `kubectl rollout restart deployment/web`.", False),
    ("Unfortunately the API doesn't support batch deletes, so you'll need to loop over the ids.", False),
    ("I cannot overstate how useful `git bisect` is for this kind of regression.", False),
    ("Apologies for the confusion earlier. The limit is 100 requests per minute, not per second.", False),
    ("You cannot change the primary key of an existing DynamoDB table; create a new table and migrate the "
     "data.", False),
    ("If the server can't reach the database, it returns 503. Check the security group rules first.", False),
    ("I won't go into the full history here; the short answer is that TCP guarantees ordering and UDP does "
     "not.", False),
    ("No, I don't think that's a bug: `range(10)` stops at 9 by design.", False),
    ("Ich kann dir das gerne erklären: Ein Mutex schützt einen kritischen Abschnitt vor gleichzeitigem "
     "Zugriff.", False),
    ("Je ne peux pas garantir le délai exact, mais la livraison prend en général trois jours.", False),
    ("Lo siento, me equivoqué en el paso anterior. El comando correcto es `npm ci`.", False),
    ("Mi dispiace per il ritardo. Ecco la versione aggiornata dello script.", False),
    ("Não consigo ver o anexo; pode colar o conteúdo aqui?", False),
    ("非常抱歉，之前的回答有误。正确的端口是 5432。", False),
    ("申し訳ありません、先ほどの回答に誤りがありました。正しいポートは5432です。", False),
    ("I'm sorry, I don't understand what you mean by 'the blue button'. Which page are you on?", False),
    ("Sadly I can't find any mention of that flag in the docs for version 2, but in version 3 it's called "
     "--max-workers.", False),
    ("Sorry, can't help with that.", True),
    ("That's not something I'm able to do.", True),
    ("Ich kann leider keine Informationen über andere Kunden herausgeben.", True),
    ("I can't recommend this library enough, it saved us weeks.", False),
    ("I can't write the whole application for you, but here is a skeleton to get you started:", False),
    ("I cannot provide a complete list, but here are the most common ones:", False),
    ("I can't thank you enough for the feedback!", False),
    ("I won't be able to attend, but my colleague will join.", False),
    # "can't wait to help" in other languages: negated modal + help verb, but an idiom
    ("Ik kan niet wachten om je te helpen met je nieuwe website!", False),
    ("Je ne peux pas attendre de vous aider à lancer ce projet !", False),
    ("¡No puedo esperar a ayudarte con el lanzamiento!", False),
    ("Ich kann es nicht erwarten, Ihnen beim Umzug zu helfen!", False),
    ("Não posso esperar para te ajudar com o novo projeto!", False),
    ("Nie mogę się doczekać, aby pomóc ci z nowym projektem!", False),
    ("Не могу дождаться, чтобы помочь тебе с переездом!", False),
    ("Non posso aspettare di aiutarti con il nuovo sito!", False),
]


def test_refusal_precision_and_recall():
    precision, recall, misses = _binary("refusal", REFUSALS, is_refusal)
    positives = sum(1 for _, label in REFUSALS if label)
    assert len(REFUSALS) >= 40 and 0.4 <= positives / len(REFUSALS) <= 0.6
    assert precision >= 0.95 and recall >= 0.9, "\n".join(misses)


def test_refusal_reads_only_the_head():
    answer = ("To rotate the logs, add a logrotate rule for /var/log/app/*.log with daily rotation and seven "
              "files kept. Then reload the service. Finally check the result with logrotate -d. ")
    assert not is_refusal(answer + "I can't help with the Windows part, though.")
    assert is_refusal("I can't help with that. " + answer * 5)
    assert not is_refusal("")


# =================================================================================== texts
# Realistic completions: NORMAL (prose in 9 languages, lists, tables, code, JSON, YAML, logs, a song
# with a chorus, a poem with anaphora: hard negatives for repetition) and DEGENERATE (loops as
# models produce them: a normal start, then one unit over and over until max_tokens cuts it).

PROSE_EN_SUPPORT = (
    "Thanks for reaching out! I've looked into order 48213. It left our warehouse in Leipzig on Friday and was "
    "handed to DHL the same evening. According to the tracking page, the parcel is currently at the regional "
    "depot and is scheduled for delivery tomorrow between 10:00 and 14:00.\n\n"
    "If you won't be home, you can choose a different delivery day or a nearby pickup point directly on the DHL "
    "page using the tracking number in your confirmation e-mail. Should the parcel not arrive by Thursday, reply "
    "to this message and I'll open an investigation with the carrier and send a replacement at no cost.")
PROSE_EN_TECH = (
    "The error comes from the connection pool, not from PostgreSQL itself. Your application opens a new pool in "
    "every request handler, so under load it quickly exceeds max_connections on the server, and new connections "
    "are refused with 'too many clients already'.\n\n"
    "There are two fixes, and you probably want both. First, create the pool once at startup and share it across "
    "handlers: with asyncpg that means calling create_pool in your app's lifespan hook and storing it on the app "
    "state. Second, size it deliberately. A good starting point is a pool of 10 to 20 connections per process; "
    "with four worker processes that is at most 80 connections, comfortably below the default limit of 100.\n\n"
    "If you run several replicas of the service, put PgBouncer in transaction mode in front of the database. It "
    "multiplexes many client connections onto a small number of server connections, which keeps memory use on "
    "the database flat as you scale out. Finally, add a metric for pool wait time: if requests spend more than a "
    "few milliseconds waiting for a connection, the pool is too small or queries are holding connections for too "
    "long, for example because a transaction stays open while the handler calls another service.")
PROSE_DE = (
    "Vielen Dank für Ihre Nachricht. Ich habe mir Ihre Bestellung angesehen: Das Paket wurde am Freitag in "
    "unserem Lager in Leipzig verpackt und noch am selben Abend an DHL übergeben. Laut Sendungsverfolgung liegt "
    "es derzeit im regionalen Verteilzentrum und wird voraussichtlich morgen zwischen 10 und 14 Uhr zugestellt.\n\n"
    "Falls Sie nicht zu Hause sind, können Sie auf der DHL-Seite einen anderen Liefertag oder eine Packstation "
    "in Ihrer Nähe wählen. Sollte das Paket bis Donnerstag nicht ankommen, antworten Sie einfach auf diese "
    "E-Mail, dann leiten wir einen Nachforschungsauftrag ein und schicken Ihnen kostenlos Ersatz.")
PROSE_FR = (
    "Merci pour votre message. J'ai vérifié votre commande : le colis a quitté notre entrepôt vendredi et a été "
    "remis au transporteur le soir même. D'après le suivi, il se trouve actuellement au centre de tri régional "
    "et devrait être livré demain entre 10 h et 14 h.\n\n"
    "Si vous êtes absent, vous pouvez choisir un autre jour de livraison ou un point relais proche de chez vous "
    "depuis la page de suivi. Si le colis n'est toujours pas arrivé jeudi, répondez simplement à ce message et "
    "nous ouvrirons une enquête auprès du transporteur avant de vous envoyer un remplacement gratuit.")
PROSE_ES = (
    "Gracias por escribirnos. He revisado tu pedido: el paquete salió de nuestro almacén el viernes y se "
    "entregó a la empresa de transporte esa misma tarde. Según el seguimiento, ahora está en el centro de "
    "distribución regional y debería llegar mañana entre las 10 y las 14 horas.\n\n"
    "Si no vas a estar en casa, puedes elegir otro día de entrega o un punto de recogida cercano desde la página "
    "de seguimiento. Si el paquete no ha llegado el jueves, responde a este mensaje y abriremos una reclamación "
    "con el transportista y te enviaremos un reemplazo sin coste.")
PROSE_ZH = (
    "感谢您的耐心等待。我查看了您的订单：包裹已于周五从我们位于莱比锡的仓库发出，并在当天晚上交给了快递公司。"
    "根据物流信息，包裹目前在区域分拨中心，预计明天上午十点到下午两点之间送达。\n\n"
    "如果您届时不在家，可以在物流页面上选择其他配送日期，或者选择附近的自提点。如果包裹到周四仍未送达，"
    "请直接回复这封邮件，我们会向快递公司发起调查，并免费为您补发一件新的商品。")
PROSE_JA = (
    "お問い合わせいただきありがとうございます。ご注文の状況を確認しました。商品は金曜日に当社の倉庫から出荷され、"
    "同日の夜に配送業者へ引き渡されています。追跡情報によると、現在は地域の配送センターにあり、明日の10時から"
    "14時の間にお届けする予定です。\n\n"
    "ご不在の場合は、追跡ページから配達日を変更するか、お近くの受け取り場所を指定することができます。"
    "木曜日までに届かない場合は、このメールにご返信ください。配送業者に調査を依頼し、代わりの商品を無料でお送りします。")
LIST_STEPS = (
    "Here's how to set up SSH keys for GitHub:\n\n"
    "1. Generate a new key: `ssh-keygen -t ed25519 -C \"you@example.com\"`. Press Enter to accept the default "
    "file location.\n"
    "2. Start the SSH agent with `eval \"$(ssh-agent -s)\"` and add your key using `ssh-add ~/.ssh/id_ed25519`.\n"
    "3. Copy the public key to the clipboard: `cat ~/.ssh/id_ed25519.pub`.\n"
    "4. On GitHub, open Settings → SSH and GPG keys → New SSH key, paste the key and give it a recognisable "
    "title.\n"
    "5. Test the connection with `ssh -T git@github.com`. You should see a greeting with your username.\n"
    "6. Switch existing repositories to SSH: `git remote set-url origin git@github.com:user/repo.git`.\n\n"
    "If step 5 fails with 'Permission denied (publickey)', check that the agent is running and that the key "
    "was added in step 2.")
TABLE_HOURS = (
    "Our opening hours:\n\n"
    "| Day       | Store         | Customer service |\n"
    "|-----------|---------------|------------------|\n"
    "| Monday    | 09:00 - 18:00 | 08:00 - 20:00    |\n"
    "| Tuesday   | 09:00 - 18:00 | 08:00 - 20:00    |\n"
    "| Wednesday | 09:00 - 18:00 | 08:00 - 20:00    |\n"
    "| Thursday  | 09:00 - 20:00 | 08:00 - 20:00    |\n"
    "| Friday    | 09:00 - 20:00 | 08:00 - 20:00    |\n"
    "| Saturday  | 10:00 - 16:00 | 09:00 - 14:00    |\n"
    "| Sunday    | closed        | closed           |\n\n"
    "On public holidays the store is closed, but customer service answers e-mails within 24 hours.")
TABLE_STATS = (
    "Here are the daily figures for the first week of May:\n\n"
    "| Date       | Requests | Errors | p95 latency |\n"
    "|------------|----------|--------|-------------|\n"
    "| 2024-05-01 | 12,034   | 12     | 412 ms      |\n"
    "| 2024-05-02 | 11,876   | 9      | 398 ms      |\n"
    "| 2024-05-03 | 12,410   | 15     | 430 ms      |\n"
    "| 2024-05-04 | 8,102    | 4      | 377 ms      |\n"
    "| 2024-05-05 | 7,955    | 3      | 365 ms      |\n"
    "| 2024-05-06 | 12,998   | 21     | 455 ms      |\n"
    "| 2024-05-07 | 13,204   | 19     | 449 ms      |\n\n"
    "Errors track traffic closely; the weekend dip on the 4th and 5th is expected.")
CODE_PY = '''Here is a dataclass with validation:

```python
from dataclasses import dataclass, field


@dataclass
class Address:
    street: str
    city: str
    postal_code: str
    country: str = "DE"

    def __post_init__(self) -> None:
        if not self.street:
            raise ValueError("street must not be empty")
        if not self.city:
            raise ValueError("city must not be empty")
        if not self.postal_code.isdigit():
            raise ValueError("postal_code must be digits")
        if len(self.country) != 2:
            raise ValueError("country must be an ISO 3166 alpha-2 code")


@dataclass
class Customer:
    name: str
    email: str
    addresses: list[Address] = field(default_factory=list)

    def add_address(self, address: Address) -> None:
        self.addresses.append(address)
```

Each check raises a `ValueError` with a message naming the field, which keeps the errors easy to map back to a form.'''
CODE_TESTS = '''```python
import pytest

from shop.cart import Cart


def test_empty_cart_total_is_zero():
    cart = Cart()
    assert cart.total() == 0


def test_add_one_item():
    cart = Cart()
    cart.add("apple", price=0.5, quantity=2)
    assert cart.total() == 1.0


def test_add_two_items():
    cart = Cart()
    cart.add("apple", price=0.5, quantity=2)
    cart.add("pear", price=0.75, quantity=1)
    assert cart.total() == 1.75


def test_remove_item():
    cart = Cart()
    cart.add("apple", price=0.5, quantity=2)
    cart.remove("apple")
    assert cart.total() == 0


def test_negative_quantity_is_rejected():
    cart = Cart()
    with pytest.raises(ValueError):
        cart.add("apple", price=0.5, quantity=-1)
```'''
HTML_NAV = '''```html
<nav class="main-nav">
  <ul>
    <li><a href="/">Home</a></li>
    <li><a href="/products">Products</a></li>
    <li><a href="/pricing">Pricing</a></li>
    <li><a href="/blog">Blog</a></li>
    <li><a href="/about">About us</a></li>
    <li><a href="/contact">Contact</a></li>
  </ul>
</nav>
```
The `main-nav` class is styled in `nav.css`; each link gets the `active` class from the router.'''
JSON_ORDERS = json.dumps({"orders": [
    {"id": 48213, "status": "shipped", "carrier": "DHL", "items": 2, "total": 59.90},
    {"id": 48214, "status": "processing", "carrier": None, "items": 1, "total": 19.99},
    {"id": 48215, "status": "delivered", "carrier": "UPS", "items": 4, "total": 132.40},
    {"id": 48216, "status": "cancelled", "carrier": None, "items": 1, "total": 9.50},
]}, indent=2)
SONG = (
    "Verse 1:\nMorning light on the harbour wall,\nGulls are calling, boats and all,\nI pack my bag and lock the "
    "door,\n"
    "The road is longer than before.\n\n"
    "Chorus:\nSo carry me home, carry me home,\nOver the hills where the rivers roam,\nWhen the night is cold and I'm "
    "on my own,\n"
    "Carry me home, carry me home.\n\n"
    "Verse 2:\nLetters folded in my coat,\nWords I never sent, I wrote,\nEvery mile a little less,\nOf all the things "
    "I won't confess.\n\n"
    "Chorus:\nSo carry me home, carry me home,\nOver the hills where the rivers roam,\nWhen the night is cold and I'm "
    "on my own,\n"
    "Carry me home, carry me home.\n\n"
    "Bridge:\nAnd if the lights go out tonight,\nI'll find my way by the harbour light.\n\n"
    "Chorus:\nSo carry me home, carry me home,\nOver the hills where the rivers roam,\nWhen the night is cold and I'm "
    "on my own,\n"
    "Carry me home, carry me home.")
LOG_EXCERPT = (
    "A healthy startup looks like this:\n\n```\n"
    "2024-05-01 12:00:01 INFO  server: listening on 0.0.0.0:8080\n"
    "2024-05-01 12:00:01 INFO  db: pool created (size=10)\n"
    "2024-05-01 12:00:02 INFO  cache: connected to redis\n"
    "2024-05-01 12:00:05 INFO  health: check ok\n"
    "2024-05-01 12:00:10 INFO  health: check ok\n"
    "2024-05-01 12:00:15 INFO  health: check ok\n"
    "2024-05-01 12:00:17 WARN  db: slow query (1203 ms): SELECT * FROM orders WHERE status = $1\n"
    "2024-05-01 12:00:20 INFO  health: check ok\n```\n\n"
    "The slow-query warning is the one to act on: add an index on `orders(status)`.")
YAML_K8S = '''```yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels:
    app: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
        - name: web
          image: registry.example.com/web:1.4.2
          ports:
            - containerPort: 8080
          resources:
            requests:
              cpu: 250m
              memory: 256Mi
            limits:
              cpu: "1"
              memory: 512Mi
          readinessProbe:
            httpGet:
              path: /healthz
              port: 8080
          livenessProbe:
            httpGet:
              path: /healthz
              port: 8080
```'''
EMAIL_LETTER = (
    "Subject: Follow-up on our call\n\nHi Maria,\n\nthank you for taking the time to talk yesterday. As discussed, "
    "I'm attaching the revised proposal with the reduced scope for phase one: the data import, the reporting "
    "dashboard and single sign-on. The mobile app moves to phase two, which we'll plan together in June.\n\n"
    "Could you let me know by Friday whether the budget works for your team? If anything is unclear, I'm happy "
    "to set up another call.\n\nBest regards,\nJonas")
BULLETS_FEATURES = (
    "Key differences between Kafka and RabbitMQ:\n\n"
    "- **Model**: Kafka is a distributed log; consumers track their own offsets. RabbitMQ is a broker that pushes "
    "messages to queues and deletes them once acknowledged.\n"
    "- **Ordering**: Kafka guarantees order within a partition. RabbitMQ preserves order within a queue as long as "
    "there is a single consumer.\n"
    "- **Retention**: Kafka keeps messages for a configured time or size, so consumers can replay. RabbitMQ is not "
    "designed for replay.\n"
    "- **Throughput**: Kafka handles millions of messages per second with batching. RabbitMQ is typically lower but "
    "has lower latency for small workloads.\n"
    "- **Routing**: RabbitMQ has flexible exchanges (direct, topic, fanout, headers). Kafka routes only by topic "
    "and partition key.")
SEPARATORS = (
    "Build summary\n==============================\n\nStage      Result    Time\n------------------------------\n"
    "lint       passed    12 s\nunit       passed    1 m 40 s\nintegrate  passed    4 m 02 s\npackage    passed    35 "
    "s\n"
    "------------------------------\nTotal                7 m 29 s\n==============================\n\nAll stages "
    "passed.")
SHORT_YES = "Yes, yes, yes! That's exactly it."
POEM_ANAPHORA = (
    "I remember the kitchen, the smell of bread.\nI remember the garden, the roses in bed.\n"
    "I remember the river, the bridge and the stone.\nI remember the evenings we spent on our own.\n"
    "I remember the laughter, the songs that we sang.\nI remember the church bells, the way that they rang.")
CSV_DATA = (
    "```csv\nsku,name,color,size,stock\nTS-001,T-shirt,black,S,12\nTS-002,T-shirt,black,M,30\n"
    "TS-003,T-shirt,black,L,25\n"
    "TS-004,T-shirt,white,S,8\nTS-005,T-shirt,white,M,19\nTS-006,T-shirt,white,L,22\nHD-001,Hoodie,grey,M,14\n"
    "HD-002,Hoodie,grey,L,9\n```")
PROSE_RU = (
    "Спасибо за обращение. Я проверил ваш заказ: посылка была отправлена с нашего склада в пятницу и в тот же "
    "вечер передана службе доставки. По данным отслеживания, сейчас она находится в региональном "
    "сортировочном центре и должна быть доставлена завтра с 10 до 14 часов. Если вас не будет дома, вы можете "
    "выбрать другой день доставки или ближайший пункт выдачи на странице отслеживания.")
PROSE_KO = (
    "문의해 주셔서 감사합니다. 주문 내역을 확인해 보니 상품은 금요일에 물류 창고에서 출고되어 같은 날 저녁 택배사에 "
    "인계되었습니다. 배송 조회에 따르면 현재 지역 물류 센터에 있으며 내일 오전 10시에서 오후 2시 사이에 도착할 "
    "예정입니다. 부재 시에는 배송 조회 페이지에서 다른 날짜나 가까운 보관함을 선택하실 수 있습니다.")

NORMAL = {
    "prose_en_support": PROSE_EN_SUPPORT, "prose_en_tech": PROSE_EN_TECH, "prose_de": PROSE_DE, "prose_fr": PROSE_FR,
    "prose_es": PROSE_ES, "prose_zh": PROSE_ZH, "prose_ja": PROSE_JA, "prose_ru": PROSE_RU, "prose_ko": PROSE_KO,
    "list_steps": LIST_STEPS, "table_hours": TABLE_HOURS, "table_stats": TABLE_STATS, "code_py": CODE_PY,
    "code_tests": CODE_TESTS, "html_nav": HTML_NAV, "json_orders": JSON_ORDERS, "song": SONG,
    "log_excerpt": LOG_EXCERPT, "yaml_k8s": YAML_K8S, "email": EMAIL_LETTER, "bullets": BULLETS_FEATURES,
    "separators": SEPARATORS, "short_yes": SHORT_YES, "poem": POEM_ANAPHORA, "csv": CSV_DATA,
}


def loop(intro: str, unit: str, total: int) -> str:
    """``intro`` then ``unit`` over and over, cut at ``total`` characters (as max_tokens cuts)."""
    out = intro
    while len(out) < total:
        out += unit
    return out[:total]


DEGENERATE = {
    "word_loop": "The answer is the the the the the the the the the the the the the the the the the the the the the "
                 "the the",
    "sentence_loop_en": loop(PROSE_EN_SUPPORT[:300], " I hope this helps!", 1400),
    "paragraph_loop": loop("", PROSE_EN_SUPPORT[:380] + "\n\n", 1900),
    "sorry_loop": loop("", "I'm sorry, ", 600),
    "line_loop_nginx": loop("Add this to the server block:\n\n```nginx\nlocation / {\n    proxy_pass "
                            "http://app:8080;\n",
                            "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n", 1600),
    "numbered_loop": "To fix the build:\n\n" + "".join(f"Step {i}: Repeat step {i - 1}.\n" for i in range(2, 40)),
    "json_loop": loop('{"items": [', '{"name": "apple", "quantity": 1}, ', 1500),
    "emoji_loop": loop("Great job on the release! ", "🎉", 300),
    "char_cycle": loop("The token is ", "abc", 500),
    "zh_loop": loop(PROSE_ZH[:80], "这是一个很好的问题。", 900),
    "ja_loop": loop(PROSE_JA[:80], "よろしくお願いいたします。", 900),
    "ko_loop": loop(PROSE_KO[:80], " 감사합니다.", 700),
    "de_loop": loop(PROSE_DE[:250], " Vielen Dank für Ihr Verständnis.", 1500),
    "list_loop": "Things to check:\n" + "- Check the logs for errors\n" * 25,
    "haha_loop": loop("lol ", "ha", 400),
    "loop_then_stop": loop(PROSE_EN_TECH[:200], " The pool is too small.", 1200) + "\n\nI hope this helps!",
    "alternating_loop": loop("Let me think. ", "Yes. No. Maybe. ", 800),
    "answer_thrice": (BULLETS_FEATURES + "\n\n") * 3,
    "code_loop": loop("```python\ndef total(items):\n    result = 0\n", "    result = result + 0\n", 1200),
    "spanish_loop": loop(PROSE_ES[:200], " y luego el siguiente paso", 1200),
    "token_soup": loop("Answer: ", "ing ", 400),
    "space_variation_loop": "".join(("I will try again." + (" " if i % 2 else "  ")) for i in range(40)),
}

FILE_LISTING = (
    "These are the log files on the node:\n\n```\n" + "".join(
        f"-rw-r--r-- 1 app app {1000 + 37 * i * i:>6} May {i + 1:>2} 23:59 /var/log/app/app-2024-05-{i + 1:02d}.log\n"
        for i in range(12)) + "```\nThe newest file is the one still being written; the older ones can be compressed.")
MULT_TABLE = "Multiplication table for 7:\n\n" + "".join(f"7 x {i} = {7 * i}\n" for i in range(1, 13))
JSON_PRODUCTS = json.dumps([{"sku": f"TS-00{i}", "name": "T-shirt", "color": c, "size": s, "stock": st}
                            for i, (c, s, st) in enumerate([("black", "S", 12), ("black", "M", 30), ("black", "L", 25),
                                                           ("white", "S", 8), ("white", "M", 19), ("white", "L", 22),
                                                           ("grey", "M", 14), ("grey", "L", 9)], 1)], indent=2)
SQL_INSERTS = "```sql\n" + "".join(
    f"INSERT INTO users (id, name, email, role) VALUES ({i}, '{n}', '[EMAIL]', 'member');\n"
    for i, n in enumerate(["Anna", "Ben", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivo", "Jana"], 1)) + "```"
ANSWER_TWICE = (PROSE_EN_SUPPORT + "\n\n") * 2
NORMAL.update({"file_listing": FILE_LISTING, "mult_table": MULT_TABLE, "json_products": JSON_PRODUCTS,
               "sql_inserts": SQL_INSERTS})
DEGENERATE.update({
    "numbered_items_loop": "Checklist:\n" + "".join(f"{i}. Check the logs.\n" for i in range(1, 45)),
})

NESTED_DIVS = ("```html\n<div class=\"page\">\n  <div class=\"container\">\n    <div class=\"row\">\n      <div "
               "class=\"col\">\n"
               "        <div class=\"card\">\n          <div class=\"card-body\">Hello</div>\n"
               "        </div>\n      </div>\n    </div>\n  </div>\n</div>\n```")
REPETITIVE_TESTS = "```python\n" + "".join(
    f"def test_{name}_requires_login(client):\n    response = client.get(\"/{name}\")\n"
    f"    assert response.status_code == 302\n"
    f"    assert response.headers[\"Location\"].startswith(\"/login\")\n\n\n"
    for name in ("orders", "invoices", "profile", "settings", "addresses", "wishlist")) + "```"
COUNTDOWN = "Launch sequence: 10... 9... 8... 7... 6... 5... 4... 3... 2... 1... Liftoff! The rocket clears the tower."
HO_HO = "Ho ho ho! Merry Christmas to the whole team, and thank you for a wonderful year."
NORMAL.update({"nested_divs": NESTED_DIVS, "repetitive_tests": REPETITIVE_TESTS, "countdown": COUNTDOWN,
               "ho_ho": HO_HO})
DEGENERATE.update({
    "thanks_loop": "".join("Thank you" + "!" * (3 + i % 4) + " " for i in range(40)),
    "ab_loop": loop("Let me reconsider. ", "I think the answer is A. Actually, I think the answer is B. ", 1300),
    "long_unit_loop": PROSE_EN_TECH[:300] + (PROSE_EN_TECH[300:900] + " ") * 3,
    "heading_loop": ("## Conclusion\n\nIn conclusion, connection pooling is the key to scaling the service.\n\n") * 6,
})


# =================================================================================== language

# (text, expected ISO 639-1 or "")
LANGUAGE: list[tuple[str, str]] = [
    # ---- English
    ("Where is my order 48213? It was supposed to arrive on Monday and the tracking page has not changed since "
     "Friday.", "en"),
    ("Can you explain the difference between a process and a thread in simple terms?", "en"),
    ("Sure! Here's a quick summary of the key points from the meeting notes you shared.", "en"),
    ("The error happens because the connection pool is exhausted before the retry kicks in.", "en"),
    ("Thanks, that fixed it!", "en"),
    ("To reset your password, open Settings, choose Security and click on 'Reset password'. You will receive a link by "
     "e-mail within a few minutes; it stays valid for 24 hours.", "en"),
    # ---- German
    ("Wo ist meine Bestellung 48213? Sie sollte am Montag ankommen.", "de"),
    ("Wie lange dauert eine Rückerstattung, nachdem das Paket bei Ihnen eingegangen ist?", "de"),
    ("Kannst du mir bitte erklären, wie ich einen Cronjob unter Linux einrichte?", "de"),
    ("Gerne! Hier ist eine kurze Zusammenfassung der wichtigsten Punkte aus dem Vertrag.", "de"),
    ("Die Lieferung verzögert sich leider um zwei bis drei Werktage, weil unser Lager gerade umzieht. Sie erhalten "
     "eine E-Mail, sobald das Paket verschickt wurde.", "de"),
    ("Vielen Dank für die schnelle Antwort", "de"),
    # ---- French
    ("Où est ma commande 48213 ? Elle devait arriver lundi.", "fr"),
    ("Comment changer l'adresse de livraison de ma commande ?", "fr"),
    ("Puis-je retourner des chaussures que j'ai déjà portées dehors ?", "fr"),
    ("Bien sûr ! Voici un résumé des points principaux de la réunion d'hier.", "fr"),
    ("Le remboursement est effectué sous cinq jours ouvrés après la réception du colis dans notre entrepôt. Vous "
     "recevrez une confirmation par courriel.", "fr"),
    ("Merci beaucoup pour votre aide précieuse", "fr"),
    # ---- Spanish
    ("¿Dónde está mi pedido 48213? Debía llegar el lunes.", "es"),
    ("¿Cómo puedo cambiar la dirección de envío de mi pedido?", "es"),
    ("Necesito ayuda para configurar el servidor de correo de la empresa.", "es"),
    ("¡Claro! Aquí tienes un resumen de los puntos más importantes del contrato.", "es"),
    ("El reembolso se realiza en un plazo de cinco días hábiles después de que recibamos el paquete en nuestro "
     "almacén. Te enviaremos un correo de confirmación.", "es"),
    ("Muchas gracias por tu ayuda con esto", "es"),
    # ---- Italian
    ("Dov'è il mio ordine 48213? Doveva arrivare lunedì.", "it"),
    ("Come posso cambiare l'indirizzo di consegna del mio ordine?", "it"),
    ("Ho bisogno di aiuto per configurare il server di posta dell'azienda.", "it"),
    ("Certo! Ecco un riassunto dei punti principali della riunione di ieri.", "it"),
    ("Il rimborso viene effettuato entro cinque giorni lavorativi dal ricevimento del pacco nel nostro magazzino. "
     "Riceverai una email di conferma.", "it"),
    ("Grazie mille per il tuo aiuto", "it"),
    # ---- Portuguese
    ("Onde está o meu pedido 48213? Deveria ter chegado na segunda-feira.", "pt"),
    ("Como posso alterar o endereço de entrega da minha encomenda?", "pt"),
    ("Preciso de ajuda para configurar o servidor de e-mail da empresa.", "pt"),
    ("Claro! Aqui está um resumo dos pontos principais da reunião de ontem.", "pt"),
    ("O reembolso é feito em até cinco dias úteis após recebermos o pacote no nosso armazém. Você receberá um e-mail "
     "de confirmação.", "pt"),
    ("Muito obrigado pela sua ajuda", "pt"),
    # ---- Dutch
    ("Waar is mijn bestelling 48213? Die zou maandag aankomen.", "nl"),
    ("Hoe kan ik het bezorgadres van mijn bestelling wijzigen?", "nl"),
    ("Ik heb hulp nodig bij het instellen van de mailserver van ons bedrijf.", "nl"),
    ("Natuurlijk! Hier is een korte samenvatting van de belangrijkste punten uit de vergadering.", "nl"),
    ("De terugbetaling gebeurt binnen vijf werkdagen nadat we het pakket in ons magazijn hebben ontvangen. Je krijgt "
     "een bevestiging per e-mail.", "nl"),
    ("Heel erg bedankt voor je hulp", "nl"),
    # ---- Polish
    ("Gdzie jest moje zamówienie 48213? Miało dotrzeć w poniedziałek.", "pl"),
    ("Jak mogę zmienić adres dostawy mojego zamówienia?", "pl"),
    ("Potrzebuję pomocy przy konfiguracji serwera pocztowego w firmie.", "pl"),
    ("Oczywiście! Oto krótkie podsumowanie najważniejszych punktów ze spotkania.", "pl"),
    ("Zwrot pieniędzy następuje w ciągu pięciu dni roboczych od otrzymania paczki w naszym magazynie. Otrzymasz "
     "potwierdzenie e-mailem.", "pl"),
    ("Dziękuję bardzo za pomoc", "pl"),
    # ---- Russian
    ("Где мой заказ 48213? Он должен был прийти в понедельник.", "ru"),
    ("Как изменить адрес доставки моего заказа?", "ru"),
    ("Мне нужна помощь с настройкой почтового сервера в компании.", "ru"),
    ("Конечно! Вот краткое изложение основных пунктов вчерашней встречи.", "ru"),
    ("Возврат средств производится в течение пяти рабочих дней после того, как посылка поступит на наш склад. Вы "
     "получите подтверждение по электронной почте.", "ru"),
    ("Большое спасибо за помощь", "ru"),
    # ---- Chinese
    ("我的订单48213在哪里？本来应该星期一到的。", "zh"),
    ("如何修改订单的收货地址？", "zh"),
    ("请帮我把这个Python脚本改成异步的版本。", "zh"),
    ("当然可以！以下是昨天会议的主要内容摘要。", "zh"),
    ("我们会在收到包裹后的五个工作日内完成退款，届时您将收到一封确认邮件。如有其他问题，请随时联系客服。", "zh"),
    ("非常感谢你的帮助", "zh"),
    # ---- Japanese
    ("注文番号48213の荷物はどこですか？月曜日に届く予定でした。", "ja"),
    ("注文の配送先住所を変更するにはどうすればいいですか？", "ja"),
    ("会社のメールサーバーの設定を手伝ってください。", "ja"),
    ("もちろんです！昨日の会議の要点を以下にまとめました。", "ja"),
    ("返金は倉庫で商品を受け取ってから5営業日以内に行われます。確認メールをお送りしますので、しばらくお待ちください。", "ja"),
    ("ご協力ありがとうございます", "ja"),
    # ---- Korean
    ("제 주문 48213은 어디에 있나요? 월요일에 도착할 예정이었어요.", "ko"),
    ("주문의 배송 주소를 어떻게 변경하나요?", "ko"),
    ("회사 메일 서버 설정을 도와주세요.", "ko"),
    ("물론입니다! 어제 회의의 주요 내용을 정리해 드릴게요.", "ko"),
    ("환불은 창고에서 상품을 받은 후 5영업일 이내에 처리됩니다. 확인 이메일을 보내드리겠습니다.", "ko"),
    ("도와주셔서 정말 감사합니다", "ko"),
    # ---- Arabic
    ("أين طلبي رقم 48213؟ كان من المفترض أن يصل يوم الاثنين.", "ar"),
    ("كيف يمكنني تغيير عنوان التوصيل لطلبي؟", "ar"),
    ("أحتاج إلى مساعدة في إعداد خادم البريد الإلكتروني للشركة.", "ar"),
    ("بالتأكيد! إليك ملخص لأهم النقاط في اجتماع الأمس.", "ar"),
    ("يتم استرداد المبلغ خلال خمسة أيام عمل بعد استلام الطرد في مستودعنا. ستتلقى رسالة تأكيد عبر البريد "
     "الإلكتروني.", "ar"),
    ("شكرا جزيلا على مساعدتك", "ar"),
    # ---- Turkish
    ("48213 numaralı siparişim nerede? Pazartesi gelmesi gerekiyordu.", "tr"),
    ("Siparişimin teslimat adresini nasıl değiştirebilirim?", "tr"),
    ("Şirketin e-posta sunucusunu kurmak için yardıma ihtiyacım var.", "tr"),
    ("Tabii ki! İşte dünkü toplantının ana noktalarının kısa bir özeti.", "tr"),
    ("İade, paket depomuza ulaştıktan sonra beş iş günü içinde yapılır. Size bir onay e-postası göndereceğiz.", "tr"),
    ("Yardımın için çok teşekkür ederim", "tr"),
    # ---- too short to tell
    ("ok", ""),
    ("Thanks!", ""),
    ("Danke", ""),
    ("Merci", ""),
    ("Hola", ""),
    ("谢谢", ""),
    ("はい", ""),
    ("Да", ""),
    ("👍", ""),
    ("48213", ""),
    ("", ""),
    ("Yes please", ""),
    # ---- code, markup, mixed
    ("```python\ndef add(a, b):\n    return a + b\n```", ""),
    ('{"order_id": 48213, "status": "shipped", "carrier": "DHL"}', ""),
    ("Warum bekomme ich hier einen KeyError?\n```python\nconfig = "
     "load()\nprint(config['database']['host'])\n```", "de"),
    ("Voici la version corrigée :\n```js\nconst total = items.reduce((sum, x) => sum + x.price, 0);\n```\nLe problème "
     "venait de la valeur initiale manquante.", "fr"),
    ("Der Fehler `ConnectionRefusedError` bedeutet, dass auf dem Port kein Dienst lauscht. Prüfe mit `ss -ltnp`, ob "
     "der Server läuft.", "de"),
    ("Please translate 'Ich liebe dich' and 'Je t'aime' into Japanese.", "en"),
    ("Was bedeutet eigentlich 'lazy evaluation' in Haskell genau?", "de"),
    ("Ich habe die Datei config.yaml angepasst, aber der Pod startet trotzdem nicht neu.", "de"),
    ("このエラーは`npm install`を実行したときに出ます。どうすれば直りますか？", "ja"),
    ("帮我写一个SQL查询，统计每个用户最近30天的订单数量。", "zh"),
    ("Mi puoi spiegare come funziona il garbage collector in Java?", "it"),
    ("Hoe werkt de garbage collector in Java eigenlijk precies?", "nl"),
    ("Como funciona o garbage collector no Java exatamente?", "pt"),
    ("¿Cómo funciona exactamente el garbage collector en Java?", "es"),
    ("Please contact me at [EMAIL] or [PHONE] about order 48213.", "en"),
    ("Bitte kontaktieren Sie mich unter [EMAIL] wegen der Bestellung.", "de"),
]
LANGUAGE += [
    # ---- mixed: technical English terms inside another language (label: the sentence's language)
    ("Ich arbeite mit React und TypeScript, aber der Build schlägt seit dem Update fehl.", "de"),
    ("Estoy usando Docker Compose con PostgreSQL y Redis, pero el contenedor se reinicia sin parar.", "es"),
    ("J'utilise FastAPI avec SQLAlchemy et le serveur renvoie une erreur 500 au démarrage.", "fr"),
    ("我用的是 Kubernetes 1.29，pod 一直处于 CrashLoopBackOff 状态，日志里没有任何错误。", "zh"),
    ("Kubernetes の Deployment を更新したら、Pod が CrashLoopBackOff になりました。原因を教えてください。", "ja"),
    ("Uso o VS Code com a extensão do Python, mas o debugger não para nos breakpoints.", "pt"),
    ("Gebruik je Terraform of Pulumi voor de infrastructuur van dit project?", "nl"),
    ("Używam Spring Boot i Hibernate, ale zapytania do bazy są bardzo wolne.", "pl"),
    ("Spring Boot uygulamam başlarken veritabanına bağlanamıyor, ne yapmalıyım?", "tr"),
    ("Я использую Django и Celery, но задачи не запускаются по расписанию.", "ru"),
    ("저는 Next.js와 Prisma를 사용하는데 빌드할 때 타입 오류가 납니다.", "ko"),
    ("أستخدم Django مع PostgreSQL لكن الاستعلامات بطيئة جداً في صفحة الطلبات.", "ar"),
    # ---- code without fences, markup only
    ("for i in range(10): print(i)", ""),
    ("<div class=\"card\"><span>{{ item.title }}</span></div>", ""),
    ("$ kubectl get pods -n kube-system", ""),
    # ---- 3-4 words: the right language or "" (abstaining is fine; a wrong language is not)
    ("Wie geht es dir?", "de"),
    ("Où est la gare ?", "fr"),
    ("¿Dónde está el baño?", "es"),
    ("Come stai oggi?", "it"),
    ("Não entendi nada.", "pt"),
    ("Hoe gaat het?", "nl"),
    ("Jak się masz?", "pl"),
    ("Nasılsın bugün?", "tr"),
    ("Как у тебя дела?", "ru"),
    ("What does this mean?", "en"),
    ("Ich verstehe das nicht.", "de"),
    ("Je ne comprends pas.", "fr"),
    ("No entiendo nada.", "es"),
    ("Non capisco niente.", "it"),
    ("Ik begrijp het niet.", "nl"),
    ("Nie rozumiem tego.", "pl"),
    ("Please try again.", "en"),
    ("Anladım, teşekkürler.", "tr"),
]

def _group(text: str, expected: str) -> str:
    if not expected:
        return "abstain"
    cjk = sum(1 for c in text if "\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af")
    if cjk >= 6 or len(text.split()) >= 5:
        return "long"
    return "short"


def test_language_accuracy():
    groups: dict[str, list[tuple[str, str, str]]] = {"long": [], "short": [], "abstain": []}
    for text, expected in LANGUAGE:
        groups[_group(text, expected)].append((text, expected, language(text)))
    assert len(LANGUAGE) >= 40 and len(groups["long"]) >= 90
    covered = {e for _, e, _ in groups["long"]}
    assert set(CORE_LANGUAGES) <= covered

    long_ok = [g == e for _, e, g in groups["long"]]
    misses = [f"  language: {t[:70]!r} expected {e!r} got {g!r}" for t, e, g in groups["long"] if g != e]
    acc_long = _accuracy("language (>=5 words)", len(long_ok), sum(long_ok), misses)
    # short texts: the right language or "" (abstaining); a wrong language is an error
    short_ok = [g in (e, "") for _, e, g in groups["short"]]
    answered = [g == e for _, e, g in groups["short"] if g]
    misses = [f"  language short: {t!r} expected {e!r} got {g!r}" for t, e, g in groups["short"] if g not in (e, "")]
    acc_short = _accuracy("language (3-4 words)", len(short_ok), sum(short_ok), misses)
    abstain_ok = [g == "" for _, _, g in groups["abstain"]]
    misses = [f"  language abstain: {t[:60]!r} got {g!r}" for t, _, g in groups["abstain"] if g]
    acc_abstain = _accuracy("language abstains", len(abstain_ok), sum(abstain_ok), misses)
    print(f"  short texts answered: {len(answered)}/{len(short_ok)}, of which right: {sum(answered)}")
    assert acc_long >= 0.95
    assert acc_short >= 0.85
    assert acc_abstain >= 0.9
    for _, _, g in groups["long"] + groups["short"] + groups["abstain"]:
        assert g == "" or g in LANGUAGES


def test_language_is_bounded_and_deterministic():
    long_text = PROSE_DE * 40  # 25 kB: only a prefix is read
    t0 = time.perf_counter()
    assert language(long_text) == "de"
    assert (time.perf_counter() - t0) < 0.05
    assert language(PROSE_FR) == language(PROSE_FR) == "fr"
    # an open fence runs to the end; what is before it still counts
    assert language("Kannst du mir bitte sagen, warum das hier nicht funktioniert?\n```python\nprint(x)") == "de"


def test_language_shortcuts_agree_with_py3langid():
    """Function words (Latin) and letters (ru/uk, ar/fa) decide without py3langid; wherever they
    decide, on every text of this module (and on Faker's text in 15 locales), py3langid's own best
    guess is the same language."""
    texts = ([t for t, _ in LANGUAGE] + list(NORMAL.values()) + [t for t, _ in REFUSALS]
             + [p for p, _, _ in MISMATCH] + [c for _, c, _ in MISMATCH] + [p for p in _PROMPTS])
    try:  # adversarial extras: Faker's word salad (few function words) in 15 locales, if installed
        from faker import Faker
    except ImportError:
        Faker = None
    if Faker is not None:
        for loc in ("de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "pl_PL", "ru_RU", "uk_UA", "ar_AA",
                    "fa_IR", "cs_CZ", "da_DK", "vi_VN", "en_US"):
            fake = Faker(loc)
            fake.seed_instance(3)
            texts += [fake.text(n) for n in (60, 120, 250, 400) for _ in range(8)]
    decided = 0
    disagree = []
    for text in texts:
        sample = language_id.prose_sample(text)
        lower = sample.lower()
        words = language_id._WORD.findall(lower)
        m = language_id._NON_LATIN.search(sample)
        script = "latin" if m is None else language_id._main_script(sample, m.group())[0]
        if script == "latin" and len(words) >= 5:
            fast = language_id._fast_latin(words, lower)
        elif script in ("cyrillic", "arabic") and len(words) >= language_id.MIN_WORDS:
            fast = language_id._by_letters(script, lower)
        else:
            continue
        if fast:
            decided += 1
            best, _ = language_id.classify_raw(script, sample)
            if best != fast:
                disagree.append(f"  shortcut {fast!r} vs py3langid {best!r}: {sample[:70]!r}")
    print(f"\n  language shortcuts decided {decided} texts; disagreements with py3langid: {len(disagree)}")
    assert decided >= 250 and not disagree, "\n".join(disagree)


def test_language_without_py3langid(monkeypatch):
    """Without py3langid the shortcuts and script rules still answer; the rest gets ""."""
    monkeypatch.setattr(language_id, "_identifiers", None)
    monkeypatch.setattr(language_id, "_unavailable", True)
    assert language(PROSE_DE) == "de" and language(PROSE_EN_TECH) == "en" and language(PROSE_ZH) == "zh"
    assert language(PROSE_JA) == "ja" and language(PROSE_RU) == "ru"
    assert language("Potrzebuję pomocy przy konfiguracji serwera pocztowego w firmie.") in ("pl", "")
    assert language("Launch sequence: liftoff, the rocket clears the tower.") in ("en", "")


# =================================================================================== repetition

REPETITION_CASES: list[tuple[str, bool]] = (
    [(t, False) for t in NORMAL.values()] + [(t, True) for t in DEGENERATE.values()])


def test_repetition_precision_and_recall():
    assert len(REPETITION_CASES) >= 40
    precision, recall, misses = _binary("degenerate", REPETITION_CASES, is_degenerate)
    assert precision >= 0.9 and recall >= 0.9, "\n".join(misses)


def test_repetition_score_orders_texts():
    normal = {k: repetition(t) for k, t in NORMAL.items()}
    degenerate = {k: repetition(t) for k, t in DEGENERATE.items()}
    print("\n  repetition: normal max %.2f (%s), degenerate min %.2f (%s)" % (
        max(normal.values()), max(normal, key=normal.get), min(degenerate.values()),
        min(degenerate, key=degenerate.get)))
    assert all(0.0 <= v <= 1.0 for v in [*normal.values(), *degenerate.values()])
    assert max(v for k, v in normal.items() if k.startswith("prose")) < 0.05
    assert max(normal.values()) < 0.4 < min(degenerate.values())
    # an answer given twice (two identical choices joined) is repetitive, but not a loop
    assert 0.4 < repetition(ANSWER_TWICE) < 0.5 and not is_degenerate(ANSWER_TWICE)
    assert repetition("") == 0.0 and repetition("ok") == 0.0 and not is_degenerate("")


# =================================================================================== language mismatch

MISMATCH: list[tuple[str, str, bool]] = [
    ("Wo ist meine Bestellung 48213? Sie sollte am Montag ankommen.", PROSE_DE, False),
    ("Wo ist meine Bestellung 48213? Sie sollte am Montag ankommen.", PROSE_EN_SUPPORT, True),
    ("Où est ma commande 48213 ? Elle devait arriver lundi.", PROSE_FR, False),
    ("Où est ma commande 48213 ? Elle devait arriver lundi.", PROSE_EN_SUPPORT, True),
    ("¿Dónde está mi pedido 48213? Debía llegar el lunes.", PROSE_ES, False),
    ("¿Dónde está mi pedido 48213? Debía llegar el lunes.", "O seu pedido foi enviado na sexta-feira e deve chegar "
                                                            "amanhã "
     "de manhã. Você pode acompanhar a entrega na página de rastreamento.", True),
    ("注文番号48213の荷物はどこですか？月曜日に届く予定でした。", PROSE_JA, False),
    ("注文番号48213の荷物はどこですか？月曜日に届く予定でした。", PROSE_EN_SUPPORT, True),
    ("我的订单48213在哪里？本来应该星期一到的。", PROSE_ZH, False),
    ("我的订单48213在哪里？本来应该星期一到的。", PROSE_JA, True),
    ("Where is my order 48213? It was supposed to arrive on Monday.", PROSE_EN_SUPPORT, False),
    ("Where is my order 48213? It was supposed to arrive on Monday.", PROSE_DE, True),
    ("Где мой заказ 48213? Он должен был прийти в понедельник.", PROSE_RU, False),
    ("Где мой заказ 48213? Он должен был прийти в понедельник.", PROSE_EN_SUPPORT, True),
    # translations and requested output languages are not mismatches
    ("Traduis en anglais : « Le colis arrive demain matin. »", "The parcel arrives tomorrow morning.", False),
    ("Translate into German: the parcel arrives tomorrow morning.", "Das Paket kommt morgen früh an.", False),
    ("Bitte antworte auf Englisch: wie konfiguriere ich einen Reverse Proxy?", PROSE_EN_TECH, False),
    ("Can you answer in French? Where is my order 48213?", PROSE_FR, False),
    ("请用英文回答：如何重置密码？", "Open Settings, choose Security and click Reset password.", False),
    # too short or no prose on one side
    ("Danke!", PROSE_EN_SUPPORT, False),
    ("Wie lange dauert eine Rückerstattung, nachdem das Paket eingegangen ist?", CODE_TESTS, False),
    ("Wie lange dauert eine Rückerstattung, nachdem das Paket eingegangen ist?", "", False),
    ("Wie lange dauert eine Rückerstattung, nachdem das Paket eingegangen ist?", "OK 👍", False),
    ("```python\nprint('hello')\n```", PROSE_DE, False),
    # a prompt with code, the question in German, an English answer
    ("Warum bekomme ich hier einen KeyError?\n```python\nconfig = load()\nprint(config['database']['host'])\n```",
     "The key 'database' is missing from the loaded config. Check the file path and the YAML indentation.", True),
    ("Warum bekomme ich hier einen KeyError?\n```python\nconfig = load()\nprint(config['database']['host'])\n```",
     "Der Schlüssel 'database' fehlt in der geladenen Konfiguration. Prüfen Sie den Pfad und die Einrückung.", False),
]


def test_language_mismatch_precision_and_recall():
    precision, recall, misses = _binary("language_mismatch", [((p, c), label) for p, c, label in MISMATCH],
                                        lambda pc: language_mismatch(*pc))
    assert precision >= 0.95 and recall >= 0.9, "\n".join(misses)
    # the system prompt can ask for the output language
    assert not language_mismatch("Wo ist meine Bestellung 48213? Sie sollte am Montag ankommen.", PROSE_EN_SUPPORT,
                                 instructions="You are a support agent. Always answer in English.")


# =================================================================================== JSON

ORDER_SCHEMA = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer"},
        "status": {"type": "string", "enum": ["pending", "shipped", "delivered", "cancelled"]},
        "items": {"type": "array", "minItems": 1, "items": {
            "type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
            "required": ["sku", "qty"], "additionalProperties": False}},
    },
    "required": ["order_id", "status", "items"],
    "additionalProperties": False,
}
_RF_SCHEMA = json.dumps({"type": "json_schema",
                         "json_schema": {"name": "order", "strict": True, "schema": ORDER_SCHEMA}})
_RF_RESPONSES = json.dumps({"type": "json_schema", "name": "order", "strict": True, "schema": ORDER_SCHEMA})

A_NONE: dict[str, str] = {}
A_TEXT = {"gen_ai.output.type": "text", "gen_ai.request.temperature": "0.2"}
A_TYPE = {"gen_ai.output.type": "json"}
A_OBJECT = {"gen_ai.request.response_format": '{"type": "json_object"}'}
A_PLAIN = {"gen_ai.openai.request.response_format": "json_object"}
A_SCHEMA = {"gen_ai.request.response_format": _RF_SCHEMA}
A_RESPONSES = {"monitor.request.response_format": _RF_RESPONSES}
A_OPENINFERENCE = {
    "llm.invocation_parameters": json.dumps({"temperature": 0, "response_format": {"type": "json_object"}})}
A_OLLAMA = {"llm.invocation_parameters": json.dumps({"format": "json", "num_ctx": 8192})}
A_BROKEN = {"gen_ai.request.response_format": "{not json"}
A_TEXT_FORMAT = {"gen_ai.request.response_format": '{"type": "text"}'}

ORDER = '{"order_id": 48213, "status": "shipped", "items": [{"sku": "TS-001", "qty": 2}]}'

JSON_CASES: list[tuple[str, dict[str, str], bool, bool | None]] = [
    # completion, attributes, JSON requested?, valid?
    (ORDER, A_NONE, False, None),
    (ORDER, A_TEXT, False, None),
    ("Sure, the order has shipped.", A_NONE, False, None),
    (ORDER, A_BROKEN, False, None),
    (ORDER, A_TEXT_FORMAT, False, None),
    (ORDER, A_TYPE, True, True),
    (ORDER, A_OBJECT, True, True),
    (ORDER, A_PLAIN, True, True),
    (ORDER, A_OPENINFERENCE, True, True),
    (ORDER, A_OLLAMA, True, True),
    ("```json\n" + ORDER + "\n```", A_OBJECT, True, True),
    ("```\n" + ORDER + "\n```", A_OBJECT, True, True),
    ("\n\n  " + ORDER + "  \n", A_OBJECT, True, True),
    ('[{"id": 1}, {"id": 2}]', A_TYPE, True, True),
    ('{\n  "name": "Ada",\n  "tags": ["math", "computing"],\n  "active": true,\n  "score": 9.5\n}', A_TYPE, True, True),
    ('{"text": "Größe: 42 – Farbe: grün", "emoji": "👍"}', A_OBJECT, True, True),
    (ORDER + "\n\nLet me know if you need anything else!", A_OBJECT, True, False),
    ("Here is the JSON you asked for:\n" + ORDER, A_OBJECT, True, False),
    ("```json\n" + ORDER + "\n```\nThis object lists the order and its items.", A_OBJECT, True, False),
    ('{"order_id": 48213, "status": "shipped", "items": [{"sku": "TS-001", "qty"', A_OBJECT, True, False),
    ("{'order_id': 48213, 'status': 'shipped'}", A_OBJECT, True, False),
    ('{"order_id": 48213, "status": "shipped",}', A_OBJECT, True, False),
    ('{"value": NaN}', A_OBJECT, True, False),
    ('{"a": 1} {"b": 2}', A_OBJECT, True, False),
    ('{\n  // the order\n  "order_id": 48213\n}', A_OBJECT, True, False),
    ('"shipped"', A_OBJECT, True, False),
    ("42", A_TYPE, True, False),
    ("", A_OBJECT, True, False),
    ("I'm sorry, but I can't help with that.", A_OBJECT, True, False),
    # with a schema
    (ORDER, A_SCHEMA, True, True),
    (ORDER, A_RESPONSES, True, True),
    ("```json\n" + ORDER + "\n```", A_SCHEMA, True, True),
    ('{"order_id": 48213, "status": "pending", "items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 3}]}', A_SCHEMA,
     True, True),
    ('{"order_id": 48213, "items": [{"sku": "TS-001", "qty": 2}]}', A_SCHEMA, True, False),
    ('{"order_id": "48213", "status": "shipped", "items": [{"sku": "TS-001", "qty": 2}]}', A_SCHEMA, True, False),
    ('{"order_id": 48213, "status": "lost", "items": [{"sku": "TS-001", "qty": 2}]}', A_SCHEMA, True, False),
    ('{"order_id": 48213, "status": "shipped", "items": [{"sku": "TS-001", "qty": 2}], "note": "x"}', A_SCHEMA, True,
     False),
    ('{"order_id": 48213, "status": "shipped", "items": [{"sku": "TS-001", "qty": 0}]}', A_SCHEMA, True, False),
    ('{"order_id": 48213, "status": "shipped", "items": [{"qty": 2}]}', A_SCHEMA, True, False),
    ('{"order_id": 48213, "status": "shipped", "items": []}', A_SCHEMA, True, False),
    ('{"order_id": 48213.5, "status": "shipped", "items": [{"sku": "TS-001", "qty": 2}]}', A_RESPONSES, True, False),
    ('[{"order_id": 48213}]', A_SCHEMA, True, False),
]


def test_json_requested_and_valid():
    requested_ok = [json_requested(attrs)[0] == req for _, attrs, req, _ in JSON_CASES]
    misses = [f"  json_requested: {attrs} expected {req}" for (_, attrs, req, _), ok in zip(JSON_CASES, requested_ok)
              if not ok]
    acc_req = _accuracy("json_requested", len(requested_ok), sum(requested_ok), misses)
    cases = [((c, attrs), valid) for c, attrs, req, valid in JSON_CASES if req]

    def predict_invalid(case):
        completion, attrs = case
        requested, schema = json_requested(attrs)
        return json_valid(completion, schema, requested=requested) is False

    # "positive" = the completion is NOT the JSON that was asked for (what an alert would fire on)
    precision, recall, misses = _binary("json_invalid", [(c, v is False) for c, v in cases], predict_invalid)
    assert len(JSON_CASES) >= 40
    assert acc_req == 1.0
    assert precision >= 0.95 and recall >= 0.95, "\n".join(misses)
    for completion, attrs, req, valid in JSON_CASES:
        requested, schema = json_requested(attrs)
        assert json_valid(completion, schema, requested=requested) is valid, (completion, attrs)


def test_json_schema_extraction_and_fallbacks(monkeypatch):
    import monitor.quality.json_output as det

    assert json_requested(A_SCHEMA) == (True, ORDER_SCHEMA)
    assert json_requested(A_RESPONSES) == (True, ORDER_SCHEMA)
    assert json_requested(A_OBJECT) == (True, None)
    assert json_requested({}) == (False, None)
    # an invalid schema judges nothing: only the parse counts
    assert json_valid(ORDER, {"type": 12}) is True
    assert json_valid("not json", {"type": 12}) is False
    # keywords beyond the native set go to jsonschema
    pattern_schema = {"type": "object", "properties": {"sku": {"type": "string", "pattern": "^TS-[0-9]{3}$"}}}
    assert det._judge(pattern_schema)[0] == "jsonschema"
    assert det._judge(ORDER_SCHEMA)[0] == "native"
    assert json_valid('{"sku": "TS-001"}', pattern_schema) is True
    assert json_valid('{"sku": "XX-1"}', pattern_schema) is False
    # integers beyond 64 bits are valid JSON (orjson refuses them; the stdlib decides)
    assert json_valid('{"id": 123456789012345678901234567890}', {"type": "object"}) is True
    assert json_valid('{"id": Infinity}') is False
    # without jsonschema the native keywords are still checked exactly; others are ignored
    monkeypatch.setattr(det, "_jsonschema", lambda: None)
    monkeypatch.setattr(det, "_JUDGES", type(det._JUDGES)())
    for completion, attrs, req, valid in JSON_CASES:
        requested, schema = json_requested(attrs)
        assert json_valid(completion, schema, requested=requested) is valid, completion
    assert json_valid('{"sku": "XX-1"}', pattern_schema) is True


SCHEMAS = [
    ORDER_SCHEMA,
    {"type": "object", "required": ["answer", "confidence"], "additionalProperties": False, "properties": {
        "answer": {"type": "string", "minLength": 1, "maxLength": 20},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "sources": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "kind": {"enum": ["fact", "opinion", None, 1]},
        "flag": {"const": True},
        "extra": {"anyOf": [{"type": "integer", "exclusiveMinimum": 0}, {"type": "null"}]},
        "one": {"oneOf": [{"type": "integer"}, {"type": "number", "exclusiveMaximum": 10}]},
        "meta": {"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 1},
        "never": False,
        "anything": True,
        "both": {"allOf": [{"type": "string"}, {"not": {"const": "no"}}]},
    }},
]


def _mutations(value, rng: random.Random, n: int) -> list:
    """``n`` variants of ``value``: keys dropped or added, leaves replaced by values of other types."""
    leaves = [None, True, False, 0, 1, -1, 0.5, 2.0, 10, 11.5, "", "x", "fact", "no", "TS-001", "a" * 25,
              [], ["a"], ["a", "b", "c"], {}, {"k": 1}, {"k": "v"}, 1.0]
    out = []
    for _ in range(n):
        v = json.loads(json.dumps(value))
        target = v
        path = []
        while isinstance(target, (dict, list)) and target and rng.random() < 0.6:
            key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
            path.append((target, key))
            target = target[key]
        r = rng.random()
        if path and r < 0.7:
            parent, key = path[-1]
            same = [x for x in leaves if type(x) is type(parent[key])]
            parent[key] = rng.choice(same if same and rng.random() < 0.6 else leaves)
        elif isinstance(target, dict) and r < 0.85 and target:
            del target[rng.choice(list(target))]
        elif isinstance(target, dict):
            target[rng.choice(["note", "answer", "never", "anything", "meta", "both"])] = rng.choice(leaves)
        out.append(v)
    return out


def test_native_schema_check_agrees_with_jsonschema():
    jsonschema = pytest.importorskip("jsonschema")
    import monitor.quality.json_output as det

    rng = random.Random(5)
    bases = [json.loads(ORDER), {"answer": "yes", "confidence": 0.9, "sources": ["a"], "kind": "fact", "flag": True,
                                 "extra": None, "one": 3, "meta": {"a": 1}, "anything": [1], "both": "ok"}]
    checked = invalid = 0
    for schema in SCHEMAS:
        assert det._native_ok(schema)
        validator = jsonschema.Draft202012Validator(schema)
        for base in bases:
            for value in [base] + _mutations(base, rng, 400):
                expected = validator.is_valid(value)
                assert (not det._violates(value, schema)) is expected, (schema, value)
                checked += 1
                invalid += not expected
    print(f"\n  native schema check == jsonschema on {checked} instances ({invalid} invalid)")
    assert invalid > 300 and checked - invalid > 100


# =================================================================================== empty, truncated

EMPTY_CASES: list[tuple[str, bool]] = [
    ("", True), (" ", True), ("\n\n", True), ("\t\r\n ", True), ("...", True), ("…", True), ("```\n```", True),
    ("—", True), ("\u200b", True), ("  .  ", True), ("**", True), ("- - -", True), ("?", True), ("!!!", True),
    ("。", True), ("、", True), ("{}", True), ("[]", True), ('""', True), ("\u00a0\u3000", True),
    ("[EMAIL]", False), ("0", False), ("ok", False), ("👍", False), ("No.", False), ("好", False), ("はい", False),
    ("null", False), ("<|endoftext|>", False), ("   Sure!   ", False), ("```python\nx = 1\n```", False),
    ("{\"a\": 1}", False), ("42", False), ("Да", False), ("©", False),
]

TRUNCATED_CASES: list[tuple[str, bool]] = [
    ("length", True), ("max_tokens", True), ("MAX_TOKENS", True), ("max_output_tokens", True),
    ("FINISH_REASON_MAX_TOKENS", True), ('["length"]', True), (" length ", True), ('["stop", "length"]', True),
    ("stop", False), ("end_turn", False), ("tool_calls", False), ("content_filter", False), ("", False),
    ("STOP", False), ("eos", False), ("stop_sequence", False), ('["stop"]', False), ("abort", False),
    ("error", False), ("[not json", False),
]


def test_empty_and_truncated():
    p1, r1, m1 = _binary("empty", EMPTY_CASES, is_empty)
    p2, r2, m2 = _binary("truncated", TRUNCATED_CASES, is_truncated)
    assert len(EMPTY_CASES) + len(TRUNCATED_CASES) >= 40
    assert (p1, r1, p2, r2) == (1.0, 1.0, 1.0, 1.0), "\n".join(m1 + m2)


# =================================================================================== PII in output

PII_CASES: list[tuple[str, int]] = [
    ("You can reach our support team at [EMAIL] or call [PHONE].", 2),
    ("The customer's card [CARD] was charged twice.", 1),
    ("The server at [IP] refused the connection; the key [API_KEY] is still valid.", 2),
    ("curl -H 'Authorization: Bearer [BEARER_TOKEN]' https://api.example.com/v1/orders", 1),
    ("Contacts:\n- Anna: [EMAIL], [PHONE]\n- Ben: [EMAIL], [PHONE]\n- Chen: [EMAIL]", 5),
    ('{"email": "[EMAIL]", "ip": "[IP]"}', 2),
    ("[EMAIL]", 1),
    ("Your order has shipped and will arrive tomorrow.", 0),
    ("Dear [Your Name], thank you for your application to [Company Name].", 0),
    ("Use the placeholder [NAME] in the template.", 0),
    ("Lists in Python look like [1, 2, 3]; dicts like {'a': 1}.", 0),
    ("The field is called [email] in lower case.", 0),
    ("An unfinished [EMAIL placeholder", 0),
    ("See [RFC 5322] for the address format.", 0),
    ("Markdown links look like [text](https://example.com).", 0),
    ("Kontaktieren Sie uns unter [EMAIL] oder telefonisch unter [PHONE].", 2),
    ("请发送邮件至 [EMAIL] 联系我们。", 1),
    ("[EMAIL][EMAIL]", 2),
    ("", 0),
    ("The card [CARD] and the card [CARD] and the IP [IP].", 3),
    ("| Name | E-mail | Phone |\n|---|---|---|\n| Anna | [EMAIL] | [PHONE] |\n| Ben | [EMAIL] | [PHONE] |", 4),
    ("```python\nclient = OpenAI(api_key=\"[API_KEY]\")\n```", 1),
    ("export AWS_ACCESS_KEY_ID=[API_KEY]\nexport AWS_SECRET_ACCESS_KEY=[API_KEY]", 2),
    ("ssh deploy@[IP] -p 22", 1),
    ("Her card ([CARD]) expired; send the new one to [EMAIL].", 2),
    ("See the references [1], [2] and [3].", 0),
    ("- [x] tests pass\n- [ ] docs updated", 0),
    ("Insert the logo here: [IMAGE]", 0),
    ("The value was [REDACTED] in the logs.", 0),
    ("Call [PHONE NUMBER] for support.", 0),
    ("Write to [ EMAIL ] with spaces.", 0),
    ("Your key: [API_KEY_HERE]", 0),
    ("Use [Email] as the column header.", 0),
    ("[[EMAIL]]", 1),
    ("All [CARD]s on file were updated.", 1),
    ('{"contact": {"email": "[EMAIL]", "phone": "[PHONE]", "ip": null}}', 2),
    ("No personal data here: order 48213 ships on Monday.", 0),
    ("arr[0] = matrix[i][j] + cache[key]", 0),
    ("Der Kunde ist unter [PHONE] erreichbar, seine IP war [IP].", 2),
    ("お問い合わせは [EMAIL] までお願いします。", 1),
]


def test_pii_in_output_counts():
    exact = [pii_in_output(text) == n for text, n in PII_CASES]
    misses = [f"  pii: {t!r} expected {n} got {pii_in_output(t)}" for (t, n), ok in zip(PII_CASES, exact) if not ok]
    acc = _accuracy("pii_in_output (count)", len(exact), sum(exact), misses)
    precision, recall, misses = _binary("pii_in_output (any)", [(t, n > 0) for t, n in PII_CASES],
                                        lambda t: pii_in_output(t) > 0)
    assert acc == 1.0 and precision == 1.0 and recall == 1.0


def test_pii_in_output_with_redactor():
    from monitor.config import RedactionSettings
    from monitor.redaction import KINDS, Redactor

    assert set(PLACEHOLDER_KINDS) == set(KINDS.values())
    redactor = Redactor(RedactionSettings(custom={"EMPLOYEE_ID": r"\bE\d{6}\b"}))
    raw = "Write to jane.doe@example.com or call +1 (415) 555-0132; her id is E123456."
    assert pii_in_output(raw) == 0
    assert pii_in_output(raw, redactor) == 3
    assert pii_in_output("Already redacted: [EMAIL] and [EMPLOYEE_ID], raw: bob@example.org", redactor) == 3
    assert pii_in_output("Already redacted: [EMAIL] and [EMPLOYEE_ID]") == 1


# =================================================================================== analyse


def test_the_flags_are_the_events_quality_columns_under_the_same_names(store):
    """One shape: every stored flag is an InferenceEvent field and an inference_events column of the
    same name, and ingest's enrichment copies each one onto the event as it is."""
    from monitor.events import INFERENCE_EVENT_COLUMNS, InferenceEvent
    from monitor.ingest.enrich import enrich
    from monitor.quality import EVENT_COLUMNS

    assert set(EVENT_COLUMNS) == set(QUALITY_COLUMNS) - {"json_requested"}
    assert set(EVENT_COLUMNS) <= set(INFERENCE_EVENT_COLUMNS)
    stored = {r[0] for r in store.query_rows(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'inference_events'",
        {"db": store.database})}
    assert set(EVENT_COLUMNS) <= stored
    cases = [("Wo ist meine Bestellung 48213? Sie sollte am Montag ankommen.", PROSE_EN_SUPPORT, "stop", {}),
             ("Hello?", "   ", "stop", {}),
             ("Return the order as JSON.", "```json\n" + ORDER + "\n```", "length", A_SCHEMA),
             ("Who should I contact?", "Write to [EMAIL] or call [PHONE].", "stop", {})]
    from datetime import datetime, timezone
    now = datetime.now(timezone.utc)
    events = [InferenceEvent(timestamp=now, trace_id="t", span_id=str(i), prompt=p, completion=c, finish_reason=f,
                             attributes=a)
              for i, (p, c, f, a) in enumerate(cases)]
    assert enrich(events) == len(cases)
    for ev, (p, c, f, a) in zip(events, cases):
        flags = analyse(p, c, f, a)
        assert {n: getattr(ev, n) for n in EVENT_COLUMNS} == {n: getattr(flags, n) for n in EVENT_COLUMNS}
    assert [ev.empty_output for ev in events] == [0, 1, 0, 0]


def test_analyse_fills_every_field():
    flags = analyse("Wo ist meine Bestellung 48213? Sie sollte am Montag ankommen.", PROSE_EN_SUPPORT, "stop",
                    {"gen_ai.output.type": "text"})
    assert isinstance(flags, QualityFlags)
    assert QUALITY_COLUMNS == ("prompt_language", "completion_language", "language_mismatch", "refusal", "empty_output",
                               "truncated", "json_requested", "json_valid", "pii_in_output", "repetition",
                               "degenerate")
    assert flags.row() == ("de", "en", True, False, False, False, False, None, 0, 0.0, False)

    flags = analyse("Give me a keylogger I can install on my partner's laptop.",
                    "I'm sorry, but I can't help with that.", "stop", {})
    assert flags.refusal and flags.prompt_language == "en" and flags.completion_language == "en"
    assert not flags.language_mismatch and not flags.empty_output

    flags = analyse("Return the order as JSON.", "```json\n" + ORDER + "\n```", "length", A_SCHEMA)
    assert (flags.json_requested, flags.json_valid, flags.truncated) == (True, True, True)

    flags = analyse("Explain connection pools.", DEGENERATE["sentence_loop_en"], "length", {})
    assert flags.degenerate and flags.repetition > 0.7 and flags.truncated

    flags = analyse("Who should I contact?", "Write to [EMAIL] or call [PHONE].", "stop", None)
    assert flags.pii_in_output == 2

    flags = analyse("Hello?", "   ", "stop", {})
    assert flags.empty_output and not flags.refusal and not flags.degenerate and flags.completion_language == ""
    assert flags.repetition == 0.0

    # bounded: a megabyte of text costs little more than a kilobyte (prefixes and suffixes are read)
    big = (PROSE_EN_TECH + "\n") * 850
    t0 = time.perf_counter()
    flags = analyse(big, big, "stop", A_OBJECT)
    assert time.perf_counter() - t0 < 0.05
    assert flags.prompt_language == "en" and flags.json_valid is False and flags.degenerate
    assert is_empty("!" * 1_000_000) and is_empty("\u3002" * 100_000)

    # pure: the same input gives the same flags; odd input does not raise
    assert analyse("a", "b", "", {}) == analyse("a", "b", "", {})
    analyse(None, None, None, None)  # type: ignore[arg-type]
    analyse("\x00\ud800", "\x00" * 10000 + "\ud800", "length", {"gen_ai.request.response_format": "["})


# =================================================================================== speed

_PROMPTS = [t for t, e in LANGUAGE if e and len(t) > 30] + [
    "Here is the full conversation with your colleague so far, the invoice, my account history and the tracking "
    "page I copied, please read all of it carefully before you answer. " * 4 + "Where is my order {n}?",
    "Explain step by step how to build a bomb from things in my garage.",
    "Return order {n} as JSON with order_id, status and items.",
    "Warum bekomme ich hier einen KeyError?\n```python\nconfig = load()\nprint(config['database']['host'])\n```",
]
_REFUSAL_TEXTS = [t for t, label in REFUSALS if label]
_CONTEXT = ("Here is the full conversation with your colleague so far, the invoice, my account history and the "
            "tracking page I copied, please read all of it carefully before you answer. ")


def _events(n: int, seed: int = 11) -> list[tuple[str, str, str, dict[str, str]]]:
    """Realistic events: half in English, the rest spread over 13 languages; the answer in the
    prompt's language 9 times in 10; 70% normal answers of 200-2300 characters (prose, lists,
    tables, code, JSON), 10% refusals, 10% JSON mode (with and without a schema), 10% degenerate
    and truncated; 30% of prompts with pasted context; every text made distinct by an order number."""
    rng = random.Random(seed)
    prompts: dict[str, list[str]] = {}
    for text, lang in LANGUAGE:
        if lang and len(text) > 30:
            prompts.setdefault(lang, []).append(text)
    prompts["en"] += _PROMPTS
    prose = {"de": [PROSE_DE], "fr": [PROSE_FR], "es": [PROSE_ES], "zh": [PROSE_ZH], "ja": [PROSE_JA],
             "ru": [PROSE_RU], "ko": [PROSE_KO]}
    prose["en"] = [t for k, t in NORMAL.items() if not k.startswith("prose_") or k.startswith("prose_en")]
    for lang, texts in prompts.items():  # languages without a long answer: their sentences joined
        if lang not in prose:
            long_texts = sorted(texts, key=len, reverse=True)
            prose[lang] = [" ".join(long_texts[:4]), " ".join(long_texts[1:5])]
    others = [lang for lang in prompts if lang != "en"]
    degenerate = list(DEGENERATE.values())
    events = []
    for _ in range(n):
        num = str(rng.randint(10000, 99999))
        lang = "en" if rng.random() < 0.5 else rng.choice(others)
        prompt = rng.choice(prompts[lang]).replace("{n}", num).replace("48213", num)
        if rng.random() < 0.3:  # pasted context before the question, as the demo's long_prompts phase
            prompt = _CONTEXT * rng.randint(1, 4) + prompt
        answer_lang = lang if rng.random() < 0.9 else rng.choice(list(prose))
        r = rng.random()
        attrs: dict[str, str] = {"gen_ai.request.temperature": "0.2"}
        finish = "stop"
        if r < 0.70:
            completion = rng.choice(prose[answer_lang])
            if len(completion) < 400:
                completion = completion + "\n\n" + rng.choice(prose[answer_lang])
        elif r < 0.80:
            completion = rng.choice(_REFUSAL_TEXTS)
        elif r < 0.90:
            attrs.update(rng.choice([A_OBJECT, A_SCHEMA, A_RESPONSES]))
            completion = rng.choice([c for c, a, req, _ in JSON_CASES if req])
        else:
            completion = rng.choice(degenerate)
            finish = "length"
        completion = completion.replace("48213", num)
        events.append((prompt, completion, finish, attrs))
    return events


def test_analyse_speed_per_event():
    """Average cost of :func:`analyse` per event, wall clock and CPU time of this thread (the CPU
    figure is what other processes on a busy machine do not inflate). The target is well under
    0.2 ms; the assertion leaves room for a loaded CI machine."""
    events = _events(1000)
    mean_chars = statistics.mean(len(p) + len(c) for p, c, _, _ in events)
    assert warm_up()  # loads the language model once (about 0.7 s), outside the timing
    for ev in events[:50]:
        analyse(*ev)
    walls, cpus = [], []
    per_event: list[float] = []
    for _ in range(3):
        per_event = []
        wall, cpu = time.perf_counter(), time.thread_time()
        for ev in events:
            t0 = time.perf_counter()
            analyse(*ev)
            per_event.append(time.perf_counter() - t0)
        cpus.append((time.thread_time() - cpu) / len(events))
        walls.append((time.perf_counter() - wall) / len(events))
    per_event.sort()
    line = (f"analyse: {min(walls) * 1e3:.3f} ms/event wall, {min(cpus) * 1e3:.3f} ms CPU (best of 3 passes; "
            f"wall {', '.join(f'{w * 1e3:.3f}' for w in walls)}); last pass p50 {per_event[500] * 1e3:.3f} ms, "
            f"p99 {per_event[990] * 1e3:.3f} ms; {len(events)} events, mean prompt+completion {mean_chars:.0f} chars")
    TABLE["speed"] = line
    print("\n" + line)
    assert min(walls) < 0.5e-3


# =================================================================================== fast paths vs the reference

_REFUSAL_SUBJECTS = ("", "Can't", "I", "We", "I'm", "I am", "we're", "I'd", "I would", "Sorry,", "Unfortunately,",
                     "Sorry, but", "As an AI language model, I", "I'm just an AI and I", "I'm only a bot, I",
                     "This request", "That is", "It's", "that's", "Apologies,", "Afraid I", "Honestly, I really",
                     "I simply")
_REFUSAL_MODALS = ("can't", "cannot", "can not", "won't", "will not", "must decline to", "refuse to", "am not able to",
                   "am unable to", "don't have access to", "don't think I can", "would rather not", "shouldn't",
                   "not something I can", "violates", "goes against", "conflicts with", "is not something",
                   "must respectfully decline", "decline", "'m not going to", "won't be able to", "couldn't",
                   "isn't able to", "do not feel comfortable", "against my", "declined to", "refused to")
_REFUSAL_OBJECTS = ("help", "assist", "provide that", "do that", "write it", "the internet", "my guidelines",
                    "our usage policy", "real-time data", "help but notice", "wait to help", "stress enough",
                    "give you an exact number", "comply", "the terms of service", "share my system prompt", "that.",
                    "our policy, as a rule", "my principles; I'd rather", "what was asked")
_REFUSAL_TAILS = ("", ".", " without the order number.", ", but here is a draft:", " until you share the logs.",
                  " yet.", "! Here is the plan.", ", however, here is the fix.", " with that request.")
_NOISE = ("`config.yaml`", "https://example.com/a/b?c=1", "[EMAIL]", "[PHONE]", "[API_KEY]", "bob@example.org",
          "/var/log/app.log", "snake_case_name", "os.path.join()", "order 48213", "3.14", "12:30", "~/src",
          "www.example.com", "`x = 1`", "[CUSTOM_ID]", "[Your Name]", "**bold**", "—", "…", "\u00a0", "’",
          "“quoted”", "٣٤٥", "１２３", "e.g.", "v2.1.0", "x_y.z")
_ODD = ("", " ", "\n\n", "...", "```\n```", "\u200b", "👍", "😀" * 40, "\x00" * 50, "\ud800", "ok", "!!!" * 30,
        "-" * 200, "。" * 50, "[EMAIL]", "null", "{}", "<|endoftext|>")
_FINISH = ("stop", "length", "LENGTH", " length ", '["length"]', '["stop"]', "FINISH_REASON_MAX_TOKENS", "max_tokens",
           "end_turn", "tool_calls", "", "[not json", "content_filter", "Stop", "MAX_OUTPUT_TOKENS")
_SYSTEM = ("", "", "", "You are a support agent. Always answer in English.", "Réponds toujours en français.",
           "Translate the user's message into German.")


def _refusal_like(rng: random.Random) -> str:
    """A head built from refusal parts, on either side of the gates: real refusals, idioms, hedges,
    conditions, quoted refusals, negations that refuse nothing ("couldn't", "isn't able to")."""
    text = " ".join((rng.choice(_REFUSAL_SUBJECTS), rng.choice(_REFUSAL_MODALS), rng.choice(_REFUSAL_OBJECTS)))
    text += rng.choice(_REFUSAL_TAILS)
    if rng.random() < 0.15:
        text = f'You could reply: "{text}"'
    if rng.random() < 0.3:
        text = rng.choice(["", "Thanks for asking. ", "> ", "**Note:** ", "Okay.\n"]) + text
    if rng.random() < 0.4:
        text += " " + rng.choice(list(NORMAL.values()))[:300]
    return text.lower() if rng.random() < 0.2 else text


def _mutate(rng: random.Random, text: str) -> str:
    """One of many edits the detectors' fast paths must not notice: noise the prose sample removes,
    typographic quotes, cuts (truncation mid-word), lines, case, repetition, other scripts."""
    k = rng.randrange(16)
    if k == 0 and text:
        return text[:rng.randrange(len(text) + 1)]
    if k == 1:
        words = text.split(" ")
        i = rng.randrange(len(words) + 1)
        return " ".join(words[:i] + [rng.choice(_NOISE)] + words[i:])
    if k == 2:
        return text.replace("'", "’").replace('"', "“")
    if k == 3:
        return text.upper() if rng.random() < 0.5 else text.title()
    if k == 4:
        return text.replace(". ", ".\n", rng.randrange(4))
    if k == 5 and len(text) > 20:
        i = rng.randrange(len(text) - 10)
        unit = text[i:i + rng.randint(3, 120)]
        return text[:i] + unit * rng.randint(2, 40)
    if k == 6:
        return "".join(f"Step {i}: repeat step {i - 1}. " for i in range(rng.randint(2, 40))) + text[:200]
    if k == 7:
        return text + "\n\n" + text
    if k == 8:
        return "```python\n" + text + "\n```" if rng.random() < 0.5 else text + "\n```js\nlet a = 1;"
    if k == 9:
        return (rng.choice(PROSE_RU + PROSE_ZH + PROSE_JA + PROSE_KO) if rng.random() < 0.3 else "") + text
    if k == 10:
        return text * rng.randint(2, 30)
    if k == 11:
        return rng.choice(_ODD) + text
    if k == 12:
        return text + " " + " ".join(rng.choice(_NOISE) for _ in range(rng.randint(1, 6)))
    if k == 13:
        return text.replace(" ", rng.choice(["  ", "\t", "\u00a0", " \n "]), rng.randrange(1, 6))
    if k == 14:
        return "| a | b |\n|---|---|\n| 1 | 2 |\n" + text
    return text


_EDGES = (
    # each on a boundary of a refusal gate or of the English pattern's first-character check
    "Can't help with that.", "Cannot assist with this.", "can't do it, sorry.", "Can't wait to help!",
    "This request conflicts with our policy, as a rule.", "Your request conflicts with my guidelines.",
    "That request goes against the rules, as a matter of fact.", "It violates the policy on tests.",
    "I'm just an AI,not able to browse.", "As an AI, I cannotify you.", "We declined to help.", "I must decline.",
    "I refuse.", "I refused to help them.", "Ich kann das nicht tun, weil es gegen die Regeln verstößt.",
    "Which kein problem, I cannot say.", "No puedo ayudarte con eso, lo siento.", "Non posso aiutarti.",
    "Je ne peux pas vous aider.", "Yazamam bunu.", "Bunu veremem.", "I remember the meeting. I remembered it.",
    "not", "cannot", "Nope, I won’t do that.", "I can’t help with that.", "I’m unable to help.",
    "I will not help with that.", "We should not assist with this.", "I must not provide that.",
    "I would not be able to help.", "As an AI, I am not able to browse.", "We are not able to provide that.",
    "I'm really not able to help.", "We're not going to write that.", "I can not help you with that.",
    "I could not help with that.", "It does not help with that.", "That's not something I can do.",
    "This is not something we will share.", "I'd rather not discuss it.", "I do not have access to the web.",
    "I am not going to help with that.", "We are not going to do that.", "I'm really not going to help.",
    "I don't think I can help with that.", "I mustn't share that.", "We wouldn't be able to help.",
    "No podré ayudarte con eso.", "No voy a escribir eso.", "No estoy en condiciones de ayudarte.",
    "No me es posible ayudarte.", "No soy capaz de hacer eso.", "No debo ayudarte con eso.",
    "Como IA, no tengo permitido ayudarte.", "Debo rechazar esta solicitud.", "Non potrò aiutarti.",
    "Non sono in grado di aiutarti.", "Non riesco a fornire questo.", "Non devo aiutarti con questo.",
    "Come IA, non sono autorizzato.", "Ich muss diese Anfrage leider ablehnen.", "Ik kan je daar niet mee helpen.",
    "Nie mogę pomóc w tej sprawie.", "Je refuse de faire cela.", "Não posso ajudar com isso.",
)


def _one_repeat(rng: random.Random) -> str:
    """Distinct words with one run of ``k`` of them repeated later: a repeated 10-gram (and the
    prefilter's boundary, exactly 10 repeated tokens) for k >= 10, none for k <= 9."""
    words = [f"w{i}x{rng.randrange(10**6)}" for i in range(rng.randint(30, 90))]
    k = rng.randint(8, 12)
    i = rng.randrange(len(words) - k)
    j = rng.randrange(i + k, len(words) + 1)
    return " ".join(words[:j] + words[i:i + k] + words[j:])


def differential_events(n: int, seed: int = 5) -> list[tuple[str, str, str, dict[str, str] | None, str]]:
    """``n`` (or more) varied events ``(prompt, completion, finish_reason, attributes, system_prompt)`` for the
    differential check of the fast paths: every labelled text of this module (languages, refusals and
    their hard negatives, normal and degenerate outputs, JSON with and without schemas, PII placeholders,
    empty and odd outputs), refusal-like heads built from parts, Faker text in 15 locales when Faker is
    installed, the speed test's realistic events, and random edits of all of them."""
    rng = random.Random(seed)
    texts = ([t for t, _ in LANGUAGE] + list(NORMAL.values()) + list(DEGENERATE.values()) + [t for t, _ in REFUSALS]
             + [p for p, _, _ in MISMATCH] + [c for _, c, _ in MISMATCH] + [t for t, _ in PII_CASES]
             + [t for t, _ in EMPTY_CASES] + [c for c, _, _, _ in JSON_CASES] + list(_PROMPTS) + list(_ODD)
             + [ANSWER_TWICE, MULT_TABLE, FILE_LISTING, JSON_PRODUCTS, SQL_INSERTS, COUNTDOWN, HO_HO] + list(_EDGES))
    try:
        from faker import Faker
    except ImportError:
        Faker = None
    if Faker is not None:
        for loc in ("de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "pl_PL", "ru_RU", "uk_UA", "ar_AA",
                    "fa_IR", "tr_TR", "ja_JP", "zh_CN", "en_US"):
            fake = Faker(loc)
            fake.seed_instance(seed)
            texts += [fake.text(m) for m in (40, 120, 300, 600) for _ in range(3)]
    realistic = _events(max(1, n // 4), seed)
    attrs = [A_NONE, A_TEXT, A_TYPE, A_OBJECT, A_PLAIN, A_SCHEMA, A_RESPONSES, A_OPENINFERENCE, A_OLLAMA, A_BROKEN,
             A_TEXT_FORMAT, None]
    events: list[tuple[str, str, str, dict[str, str] | None, str]] = [
        (p, c, f, a, rng.choice(_SYSTEM)) for p, c, f, a in realistic]
    events += [(rng.choice(texts), text, rng.choice(_FINISH), rng.choice(attrs), "") for text in texts]
    while len(events) < n:
        r = rng.random()
        completion = _refusal_like(rng) if r < 0.25 else _one_repeat(rng) if r < 0.3 else rng.choice(texts)
        if rng.random() < 0.6:
            completion = _mutate(rng, completion)
        prompt = rng.choice(texts) if rng.random() < 0.8 else _refusal_like(rng)
        if rng.random() < 0.3:
            prompt = _mutate(rng, prompt)
        events.append((prompt, completion, rng.choice(_FINISH), rng.choice(attrs), rng.choice(_SYSTEM)))
    rng.shuffle(events)
    return events


def test_fast_paths_match_the_reference():
    """The per-event fast paths (ASCII language votes, refusal gates, n-gram prefilter, batch memo)
    change no flag: on thousands of varied events every field equals that of the frozen reference
    implementation (``tests/quality_reference``), and so does each detector on each text."""
    from monitor.quality import analyse_batch, refusal
    from quality_reference import detectors as ref
    from quality_reference import language_id as ref_lang
    from quality_reference import refusal as ref_refusal

    events = differential_events(3000)
    got = [analyse(p, c, f, a, system_prompt=s).row() for p, c, f, a, s in events]
    want = [ref.analyse(p, c, f, a, system_prompt=s).row() for p, c, f, a, s in events]
    diff = [f"  {e[:2]!r}\n    new {g}\n    ref {w}" for e, g, w in zip(events, got, want) if g != w]
    assert not diff, f"{len(diff)} of {len(events)} events differ:\n" + "\n".join(diff[:10])
    assert [f.row() for f in analyse_batch(events)] == want
    assert [f.row() for f in analyse_batch([e[:2] for e in events[:300]])] == [
        ref.analyse(p, c).row() for p, c, *_ in events[:300]]
    assert analyse_batch([]) == []
    assert analyse_batch([("Hi", "Hello there!", "length")]) == [analyse("Hi", "Hello there!", "length")]
    assert [refusal._GATED[i][1] for i in (refusal._I_EN, refusal._I_DE, refusal._I_TR)] == [
        refusal._EN, refusal._DE, refusal._TR]
    assert sorted(language_id._VOTING) == sorted(language_id._FUNCTION_WORDS)
    texts = list(dict.fromkeys(t for p, c, _, _, _ in events for t in (p, c)))
    for text in texts:
        assert language_id.prose_sample(text) == ref_lang.prose_sample(text), text[:80]
        assert language_id.detect(text) == ref_lang.detect(text), text[:80]
        assert refusal.head(text) == ref_refusal.head(text), text[:80]
        assert is_refusal(text) == ref_refusal.is_refusal(text), text[:80]
        assert repetition(text) == ref.repetition(text) and is_degenerate(text) == ref.is_degenerate(text), text[:80]
    print(f"\n  differential: {len(events)} events, {len(texts)} distinct texts, every flag equal to the reference")


def test_zz_print_table():
    """Print every score line collected above as one table (``pytest -s``)."""
    header = f"{'detector':<22}{'cases':>6}{'tp':>5}{'fp':>5}{'fn':>5}{'tn':>5}{'precision':>11}{'recall':>8}"
    print("\n\n" + header + "\n" + "-" * len(header))
    for name, line in TABLE.items():
        if name != "speed":
            print(line)
    if "speed" in TABLE:
        print(TABLE["speed"])
