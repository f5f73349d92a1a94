"""Labelled Chinese paragraphs for measuring how well the privacy step finds personal data.

Each paragraph is prose of the kind tenants send (customer-service notes, bank alerts, school
reminders, shop orders, HR records) with values written the ways people write them, and the
character offsets of every piece of personal data in it. Paragraphs with no personal data and
look-alikes that are not personal data (order, invoice and tracking numbers, amounts, dates,
product codes) are mixed in, so precision is measured too.

The values are made here from their published rules (check digits included), not from the
recognizers' patterns, so an evaluation against them is a fair one.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from string import Formatter

__all__ = ["SPAN_TYPES", "chinese_paragraphs"]

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾萧田董潘袁蔡蒋余于杜叶程魏苏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红鹏辉建国文斌宇浩凯欣怡子涵梓轩雨婷思远嘉琪俊杰晓东海燕志强春梅"
_PINYIN_SURNAMES = ["wang", "li", "zhang", "liu", "chen", "yang", "huang", "zhao", "wu", "zhou",
                    "xu", "sun", "ma", "zhu", "hu", "guo", "he", "gao", "lin", "luo", "zheng"]
_PINYIN_GIVEN = ["wei", "fang", "na", "min", "jing", "li", "qiang", "lei", "jun", "yang",
                 "yong", "yan", "jie", "juan", "tao", "ming", "chao", "xiuying", "xiaodong",
                 "haiyan", "zhiqiang", "yuting", "zihan", "haoran", "jiaqi"]
_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "成都", "武汉", "南京", "西安", "重庆", "苏州",
           "长沙", "青岛", "厦门", "昆明", "天津", "郑州", "沈阳", "合肥", "福州", "兰州", "哈尔滨"]
_COMPANIES = ["华信科技", "东方物流", "博远教育", "恒丰贸易", "启明软件", "安居物业", "新禾食品",
              "蓝海传媒", "中辰建设", "锦程旅行社", "汇通电子", "百川医疗器械"]
_SHOPS = ["优品生活馆", "小米之家", "鲜丰水果", "绿源超市", "京选旗舰店", "潮流服饰店"]
_ITEMS = ["蓝牙耳机", "羽绒服", "电饭煲", "儿童书包", "跑步鞋", "空气净化器", "茶叶礼盒", "机械键盘"]
_BANKS = ["工商银行", "建设银行", "农业银行", "中国银行", "招商银行", "交通银行", "邮储银行"]
_SCHOOLS = ["实验小学", "第二中学", "外国语学校", "育才中学", "师范大学附属小学"]
_COURSES = ["数学", "英语", "物理", "语文", "化学", "美术"]
_DEPARTMENTS = ["财务部", "人力资源部", "市场部", "研发中心", "客服中心", "采购部"]

_AREA_CODES = ["110101", "110105", "110108", "120103", "130102", "140105", "210102", "230103",
               "310101", "310104", "310115", "320102", "320508", "330106", "340104", "350203",
               "360102", "370202", "410105", "420111", "430104", "440106", "440305", "450103",
               "500103", "510107", "520102", "530102", "610113", "620102", "650102"]
_MOBILE_PREFIXES = ["130", "131", "132", "133", "135", "136", "137", "138", "139", "147", "150",
                    "151", "152", "155", "156", "157", "158", "159", "166", "173", "176", "177",
                    "180", "181", "182", "183", "185", "186", "187", "188", "189", "191", "198",
                    "199"]
_LANDLINE_AREAS = ["010", "020", "021", "022", "023", "024", "025", "027", "028", "029", "0755",
                   "0571", "0512", "0731", "0532", "0591", "0871", "0451", "0931"]
# Issuer prefixes of mainland debit and credit cards (UnionPay 62 and a CCB Visa).
_CARD_BINS = ["622202", "621226", "622848", "621700", "622700", "621661", "622588", "621483",
              "622260", "622188", "621799", "622908", "623058", "625965", "436742"]
_MAIL_DOMAINS = ["163.com", "126.com", "qq.com", "foxmail.com", "sina.com", "sohu.com",
                 "yeah.net", "aliyun.com", "gmail.com", "outlook.com", "huaxin-tech.com.cn",
                 "dongfang56.com.cn", "pku.edu.cn", "mail.ustc.edu.cn", "stu.xjtu.edu.cn",
                 "139.com"]
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECKS = "10X98765432"
_USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_PASSPORT_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"

Gen = Callable[[random.Random], str]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _name(rng: random.Random) -> str:
    return rng.choice(_SURNAMES) + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))


def _birth_date(rng: random.Random, first_year: int, last_year: int) -> str:
    year = rng.randint(first_year, last_year)
    month = rng.randint(1, 12)
    day = rng.randint(1, 30 if month in (4, 6, 9, 11) else 28 if month == 2 else 31)
    return f"{year:04d}{month:02d}{day:02d}"


def _id_check(first17: str) -> str:
    return _ID_CHECKS[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def _id_first17(rng: random.Random) -> str:
    return rng.choice(_AREA_CODES) + _birth_date(rng, 1950, 2012) + _digits(rng, 3)


def _resident_id(rng: random.Random) -> str:
    first17 = _id_first17(rng)
    check = _id_check(first17)
    return first17 + (check.lower() if rng.random() < 0.3 else check)


def _resident_id_wrong_check(rng: random.Random) -> str:
    first17 = _id_first17(rng)
    wrong = [c for c in _ID_CHECKS if c != _id_check(first17)]
    return first17 + rng.choice(wrong)


def _resident_id_15(rng: random.Random) -> str:
    return rng.choice(_AREA_CODES) + _birth_date(rng, 1930, 1984)[2:] + _digits(rng, 3)


def _luhn_digit(partial: str) -> str:
    total = 0
    for i, char in enumerate(reversed(partial)):
        digit = int(char) * (2 if i % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return str((10 - total % 10) % 10)


def _grouped(rng: random.Random, digits: str) -> str:
    style = rng.random()
    if style < 0.45:
        return digits
    separator = " " if style < 0.85 else "-"
    return separator.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _bank_card(rng: random.Random) -> str:
    length = rng.choice((16, 19, 19, 19))
    partial = rng.choice(_CARD_BINS) + _digits(rng, length - 7)
    return _grouped(rng, partial + _luhn_digit(partial))


def _foreign_card(rng: random.Random) -> str:
    prefix = rng.choice(("4", "51", "53", "55"))
    partial = prefix + _digits(rng, 15 - len(prefix))
    return _grouped(rng, partial + _luhn_digit(partial))


def _mobile(rng: random.Random) -> str:
    number = rng.choice(_MOBILE_PREFIXES) + _digits(rng, 8)
    spaced = f"{number[:3]} {number[3:7]} {number[7:]}"
    return rng.choice(
        [number, number, number, spaced, f"{number[:3]}-{number[3:7]}-{number[7:]}",
         f"+86 {spaced}", f"+86{number}", f"+86-{number}", f"86 {number}", f"(+86){number}",
         f"（+86）{spaced}", f"0086 {number}"]
    )


def _landline(rng: random.Random) -> str:
    area = rng.choice(_LANDLINE_AREAS)
    local = str(rng.randint(2, 8)) + _digits(rng, 7 if len(area) == 3 or rng.random() < 0.7 else 6)
    pretty = f"{local[:4]} {local[4:]}" if len(local) == 8 else local
    return rng.choice(
        [f"{area}-{local}", f"{area}-{local}", f"({area}){local}", f"（{area}）{pretty}",
         f"{area} {pretty}", f"+86 {area[1:]} {local}", f"+86-{area[1:]}-{local}",
         f"{area}-{local}-{rng.randint(100, 8999)}", f"{area}-{local}转{rng.randint(10, 899)}"]
    )


def _email(rng: random.Random) -> str:
    surname, given = rng.choice(_PINYIN_SURNAMES), rng.choice(_PINYIN_GIVEN)
    local = rng.choice(
        [f"{surname}{given}", f"{given}.{surname}", f"{surname}.{given}{rng.randint(1, 99)}",
         f"{surname[0]}{given[0]}{rng.randint(1970, 2012)}", f"{given}_{surname}",
         f"{surname}{given}+shop", str(rng.randint(10_000, 9_999_999_999)),
         f"hr-{rng.choice(['bj', 'sh', 'gz', 'sz'])}", f"{given}{surname}{rng.randint(1, 999)}"]
    )
    domain = "qq.com" if local.isdigit() else rng.choice(_MAIL_DOMAINS)
    at = "＠" if rng.random() < 0.04 else "@"
    address = f"{local}{at}{domain}"
    return address.upper() if rng.random() < 0.05 else address


def _uscc(rng: random.Random) -> str:
    body = (
        rng.choice(["91", "91", "91", "92", "93", "12", "51", "52"])
        + rng.choice(_AREA_CODES[:20])[:4] + "00"
        + "".join(rng.choice(_USCC_CHARS) for _ in range(9))
    )
    total = sum(_USCC_CHARS.index(c) * w for c, w in zip(body, _USCC_WEIGHTS, strict=True))
    return body + _USCC_CHARS[(31 - total % 31) % 31]


def _passport(rng: random.Random) -> str:
    shape = rng.random()
    if shape < 0.45:
        return "E" + rng.choice(_PASSPORT_LETTERS.replace("I", "").replace("O", "")) + _digits(rng, 7)
    return ("E" if shape < 0.85 else "G") + _digits(rng, 8)


def _qq(rng: random.Random) -> str:
    return str(rng.randint(10_000, 3_999_999_999))


def _wechat(rng: random.Random) -> str:
    surname, given = rng.choice(_PINYIN_SURNAMES), rng.choice(_PINYIN_GIVEN)
    return rng.choice(
        [f"{surname}_{given}{rng.randint(1, 99)}", f"{given}-{rng.randint(1980, 2010)}",
         f"wxid_{''.join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(10))}",
         f"{given.capitalize()}{surname.capitalize()}{rng.randint(10, 99)}", f"{surname}{given}888"]
    )


def _url(rng: random.Random) -> str:
    path = rng.choice(["/order/detail?id=" + _digits(rng, 10), "/u/" + _digits(rng, 8),
                       "/s/" + "".join(rng.choice(string.ascii_letters) for _ in range(8)), ""])
    host = rng.choice(["www.huaxin-tech.com.cn", "m.boyuan-edu.cn", "shop.xinhe-food.com",
                       "h5.anju-wuye.cn", "www.example.com"])
    # People drop the scheme only when the host starts with "www.".
    schemes = ["https://", "http://", "https://"] + ([""] if host.startswith("www.") else [])
    return rng.choice(schemes) + host + path


# Look-alikes: none of these is personal data.
def _order_no(rng: random.Random) -> str:
    return f"{rng.randint(2021, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}" + _digits(
        rng, rng.choice((8, 10, 12)))


def _tracking_no(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return "7" + _digits(rng, 13)  # ZTO-style, digits only
    return rng.choice(["SF", "YT", "JDVA", "ZTO"]) + _digits(rng, rng.choice((12, 13)))


def _invoice_no(rng: random.Random) -> str:
    return "0" + rng.choice(["44", "31", "11", "33", "51"]) + _digits(rng, 9)


def _amount(rng: random.Random) -> str:
    value = rng.randint(1, 2_000_000) / 100
    return rng.choice([f"{value:,.2f}元", f"¥{value:,.2f}", f"{int(value)}元", f"人民币{value:.2f}元"])


def _date(rng: random.Random) -> str:
    year, month, day = rng.randint(2020, 2025), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{year}年{month}月{day}日", f"{year}-{month:02d}-{day:02d}",
                       f"{month}月{day}日", f"{year}/{month:02d}/{day:02d}"])


def _time(rng: random.Random) -> str:
    return f"{rng.randint(7, 21)}:{rng.choice(['00', '15', '30', '45'])}"


def _product_code(rng: random.Random) -> str:
    return rng.choice([f"SKU-{rng.choice('ABCDK')}{_digits(rng, 7)}", f"HW-P{rng.randint(10, 90)}-128G",
                       f"RX-{rng.randint(1000, 9999)}", f"BX{_digits(rng, 6)}"])


def _imei(rng: random.Random) -> str:
    return "86" + _digits(rng, 13)


_PII: dict[str, tuple[str, Gen]] = {
    "mobile": ("PHONE_NUMBER", _mobile),
    "landline": ("PHONE_NUMBER", _landline),
    "email": ("EMAIL_ADDRESS", _email),
    "id": ("CN_RESIDENT_ID", _resident_id),
    "badid": ("CN_RESIDENT_ID_UNVERIFIED", _resident_id_wrong_check),
    "oldid": ("CN_RESIDENT_ID_UNVERIFIED", _resident_id_15),
    "card": ("CN_BANK_CARD", _bank_card),
    "visa": ("CREDIT_CARD", _foreign_card),
    "uscc": ("CN_USCC", _uscc),
    "passport": ("CN_PASSPORT", _passport),
    "qq": ("CN_IM_ID", _qq),
    "wechat": ("CN_IM_ID", _wechat),
    "url": ("URL", _url),
}
SPAN_TYPES = frozenset(entity for entity, _ in _PII.values())
_FILLERS: dict[str, Gen] = {
    "name": _name,
    "surname": lambda rng: rng.choice(_SURNAMES),
    "city": lambda rng: rng.choice(_CITIES),
    "company": lambda rng: rng.choice(_COMPANIES),
    "shop": lambda rng: rng.choice(_SHOPS),
    "item": lambda rng: rng.choice(_ITEMS),
    "bank": lambda rng: rng.choice(_BANKS),
    "school": lambda rng: rng.choice(_SCHOOLS),
    "course": lambda rng: rng.choice(_COURSES),
    "dept": lambda rng: rng.choice(_DEPARTMENTS),
    "grade": lambda rng: rng.choice("一二三四五六"),
    "n": lambda rng: str(rng.randint(2, 30)),
    "tail": lambda rng: _digits(rng, 4),
    "code": lambda rng: _digits(rng, 6),
    "order": _order_no,
    "tracking": _tracking_no,
    "invoice": _invoice_no,
    "amount": _amount,
    "date": _date,
    "time": _time,
    "product": _product_code,
    "imei": _imei,
}

# Customer service, banking, school, shops, HR, logistics, government forms; then paragraphs
# with look-alikes only, then paragraphs with nothing at all.
_TEMPLATES = [
    "客户{name}来电反映{item}无法开机，回访电话{mobile}，请售后在{date}前联系。",
    "用户{name}（手机：{mobile}）投诉订单{order}迟迟未发货，已登记，邮箱{email}，要求48小时内回复。",
    "工单备注：{name}女士说短信收不到，换号后新手机{mobile}，旧号{mobile2}已停用。",
    "请发到邮箱{email}谢谢，发票抬头写{company}有限公司，税号{uscc}。",
    "{name}先生的退款{amount}已原路退回尾号{tail}的卡，如有疑问请拨打客服热线{landline}。",
    "售后单{order}：客户留的联系方式是{mobile}，备用邮箱：{email}；上门时间{date} {time}。",
    "您尾号{tail}的{bank}储蓄卡于{date} {time}支出{amount}，余额请登录手机银行查询。",
    "转账提醒：{name}向您尊敬的账户{card}转入{amount}，附言“房租”。",
    "请核对收款信息：户名{name}，开户行{bank}{city}分行，卡号{card}，金额{amount}。",
    "信用卡还款提醒：您的卡号{visa}本期应还{amount}，最后还款日{date}。",
    "{name}同学家长您好，本周五{time}召开{grade}年级家长会，请回复班主任邮箱{email}确认是否参加。",
    "【{school}】{course}课外辅导报名表：学生{name}，家长电话{mobile}，身份证号{id}。",
    "{school}提醒：请家长于{date}前把学生身份证复印件交给班主任，联系方式{landline}。",
    "订单{order}已发货，{tracking}，收货人{name}，电话{mobile}，请保持手机畅通。",
    "您在{shop}购买的{item}（货号{product}）已签收，共{amount}，评价有礼。",
    "买家留言：发顺丰，到了打我电话{mobile}，或者加微信{wechat}。",
    "有事找我，wx：{wechat}，V信同号，电话{mobile}。",
    "代购群满了，想加的私聊vx {wechat}，备注{city}。",
    "店铺客服：亲，您的订单{order}退货已受理，退货运单号{tracking}，退款{amount}。",
    "员工档案：{name}，{dept}，身份证{id}，手机{mobile}，紧急联系人{name2}（{mobile2}）。",
    "入职材料：{name}，身份证号码{badid}（复印件上的号码与系统不一致，请核实），银行卡{card}。",
    "HR备注：新同事{name}的工资卡是{bank}{card}，个人邮箱{email}，入职日期{date}。",
    "离职交接：{name}的工作邮箱{email}停用，客户改联系{name2}，座机{landline}。",
    "签证材料清单：申请人{name}，护照号码{passport}，有效期至{date}，联系电话{mobile}。",
    "出差审批：{name}赴{city}参加展会，护照：{passport}，身份证：{id}，预算{amount}。",
    "酒店登记：住客{name}，证件类型护照，证件号{passport}，房费{amount}已预付。",
    "合作方信息：{company}有限公司，统一社会信用代码{uscc}，对接人{name}，电话{landline}。",
    "供应商准入：{company}（统一社会信用代码：{uscc}），开户行{bank}，账号{card}。",
    "社保补缴申请：{name}，老身份证号{oldid}，新身份证号{id}，请一并更新。",
    "户籍信息核对：{name}，原15位身份证号码{oldid}，现住{city}。",
    "实名登记的身份证号{badid}校验不通过，请{name}本人携带证件到营业厅办理。",
    "活动报名成功！姓名：{name}，QQ：{qq}，微信号：{wechat}，请按时参加{date}的线下沙龙。",
    "想要资料的同学加我QQ {qq}，或者扣扣群里找我，备注{course}。",
    "联系人{name}，微信同手机号{mobile}，邮箱{email}。",
    "我的qq是{qq}，邮箱{email}，有问题随时留言。",
    "物业通知：{city}安居花园{n}栋业主{name}，您的快递已放在门卫室，取件码{code}，物业电话{landline}。",
    "快递员留言：{name}您好，包裹{tracking}放在丰巢，有事打{mobile}。",
    "报名请访问{url}，或发邮件至{email}。咨询电话：{landline}。",
    "退款进度可在{url}查询，订单号{order}，如有问题联系客服{mobile}。",
    "Customer {name} asked to change the contact e-mail to {email} and the phone to {mobile}.",
    "Passport No. {passport}, holder {name}, issued in {city}; contact {email}.",
    "医院预约：患者{name}，身份证{id}，就诊卡绑定手机{mobile}，预约{date} {time}{course}科。",
    "网点回访：{name}反映在{city}某支行办理业务时，工作人员把身份证号{id}写错成了{badid}。",
    "租房合同：出租人{name}，身份证号{id}；承租人{name2}，身份证号{id2}；月租金{amount}。",
    "会员资料更新：{name}，生日{date}，新邮箱（{email}），新电话：{mobile}。",
    "报销单：{name}，{dept}，报销金额{amount}，发票代码{invoice}，收款卡号{card}。",
    "招聘投递：请将简历发送至{email}，邮件标题注明“应聘+姓名”，HR电话{landline}。",
    "[系统]用户{name}绑定了新的QQ号码：{qq}，旧邮箱{email}解绑。",
]
_LOOKALIKE_TEMPLATES = [
    "订单{order}已于{date}完成支付，实付{amount}，发票代码{invoice}，电子发票已发送。",
    "您的快递{tracking}正在派送中，预计{date} {time}前送达，商品货号{product}。",
    "设备登记：IMEI {imei}，型号{product}，入库单号{order}，采购价{amount}。",
    "{date}销售日报：{shop}共成交{n}单，合计{amount}，退货单号{order}。",
    "验证码{code}，用于登录{shop}，{n}分钟内有效，请勿泄露。",
    "本月账单：水费{amount}，电费{amount2}，物业费{amount3}，缴费截止{date}。",
    "出库单{order}：{item}{n}件，批次{product}，质检日期{date}，物流{tracking}。",
]
_PLAIN_TEMPLATES = [
    "{school}本周开展{course}主题周活动，欢迎家长周五下午到校观摩，届时请从东门进入。",
    "{city}今天多云转小雨，气温十八到二十四度，出门请带好雨具，注意交通安全。",
    "{company}年会将在下月举行，请各部门提前准备节目，具体安排另行通知。",
    "{shop}周末满减活动开始啦，全场{item}八折，会员再享积分翻倍。",
    "会议纪要：{dept}讨论了下季度预算，决定先做用户调研，再确定推广方案。",
    "{name}说这次的{item}质量很好，包装也很用心，下次还会回购。",
]


def _render(template: str, rng: random.Random) -> tuple[str, list[dict[str, object]]]:
    pieces: list[str] = []
    spans: list[dict[str, object]] = []
    length = 0
    for literal, field, _, _ in Formatter().parse(template):
        pieces.append(literal)
        length += len(literal)
        if field is None:
            continue
        kind = field.rstrip("0123456789")
        if kind in _PII:
            entity_type, make = _PII[kind]
            value = make(rng)
            spans.append({"type": entity_type, "start": length, "end": length + len(value)})
        else:
            value = _FILLERS[kind](rng)
        pieces.append(value)
        length += len(value)
    return "".join(pieces), spans


def _template(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.12:
        return rng.choice(_LOOKALIKE_TEMPLATES)
    if pick < 0.2:
        return rng.choice(_PLAIN_TEMPLATES)
    return rng.choice(_TEMPLATES)


def chinese_paragraphs(seed: int, n: int) -> list[dict[str, object]]:
    """`n` labelled Chinese paragraphs, the same ones for the same `seed`.

    Parameters
    ----------
    seed : int
        Seed of the ``random.Random`` that picks templates and values.
    n : int
        How many paragraphs; about 80% hold personal data, 12% look-alikes only, 8% nothing.

    Returns
    -------
    list of dict
        ``{"id": str, "text": str, "language": "zh", "spans": [{"type", "start", "end"}]}``,
        offsets in characters, types as the analyzer reports them (e.g. ``PHONE_NUMBER``,
        ``CN_RESIDENT_ID_UNVERIFIED``).
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        text, spans = _render(_template(rng), rng)
        paragraphs.append({"id": f"zh-{seed}-{i}", "text": text, "language": "zh", "spans": spans})
    return paragraphs
